"""Automatic retraining (``paychan serve --retrain-after N``): after N new samples the
gateway's retrainer runs the real ``paychan models retrain`` in a subprocess, once, and a
candidate that passes the gate becomes the store's champion (which the serving gateway then
swaps in by itself: gateway.model_watch)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path

import pytest
from polling import until

from gateway.config import ConfigError, GatewayConfig
from gateway.retraining import STATE_FILE, Retrainer
from inference import ModelStore
from inference.samples import SampleStore, resolve_label

TESTS = Path(__file__).resolve().parents[1]
[NEW_CLASS] = [p for p in (TESTS / "photos" / "new_class").iterdir() if p.is_dir()]
PHOTOS = sorted(NEW_CLASS.glob("*.jpg"))
EVERY = 12
REPLAY = (TESTS / "photos" / "more", TESTS / "inference" / "retrain_replay")


async def submit(store: SampleStore, photos: list[Path]) -> None:
    label = resolve_label(NEW_CLASS.name, "other_mammal")
    for photo in photos:
        await store.add(photo.read_bytes(), "JPEG", label=label, payer="0x" + "ef" * 20)


@pytest.mark.slow
async def test_n_new_samples_start_one_retrain_in_a_subprocess(tmp_path: Path) -> None:
    models = tmp_path / "models"
    store = ModelStore.open(models)
    first = store.resolve("champion").id
    for source in REPLAY:  # <models>/replay/: what every retrain of this store replays
        shutil.copytree(source, models / "replay" / source.name)
    samples = SampleStore(tmp_path / "samples")
    retrainer = Retrainer(models, samples.root, every=EVERY, poll_s=0.05,
                          extra_args=("--device", "cpu"))
    loop = asyncio.create_task(retrainer.run())
    try:
        await submit(samples, PHOTOS[:EVERY - 1])
        await asyncio.sleep(0.5)  # ten polls: one short of EVERY, nothing starts
        assert retrainer.runs == 0 and not retrainer.running
        await submit(samples, PHOTOS[EVERY - 1:EVERY])
        await until(lambda: retrainer.running, timeout=30, interval=0.05)
        await until(lambda: retrainer.runs == 1, timeout=600, interval=0.2)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    run = retrainer.last
    assert run is not None and run.exit_code == 0, run
    assert run.decision == "promoted to champion" and run.samples == EVERY
    champion = store.resolve("champion")
    assert champion.id == run.candidate != first
    assert champion.manifest.labels[-1] == NEW_CLASS.name
    assert store.report(champion.id)["data"]["replay_photos"] > 0
    state = json.loads((models / STATE_FILE).read_text())
    assert state["samples"] == EVERY and state["last"]["candidate"] == champion.id
    # a restarted retrainer remembers: no new samples, no second retrain
    again = Retrainer(models, samples.root, every=EVERY)
    assert await again.check() is None and again.runs == 0


def test_retrain_after_needs_a_model_store() -> None:
    with pytest.raises(ConfigError, match="retrain_after: needs a model store"):
        GatewayConfig.from_mapping({"retrain_after": 5})
    config = GatewayConfig.from_mapping({"retrain_after": 5, "models": "models"})
    assert config.retrain_after == 5 and config.retrain_poll_s > 0
