"""The sample store (inference/samples.py): labels, content addressing, deduplication,
disk bounds, durability across a reopen, a torn manifest line and the read API a retrain uses."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
from pathlib import Path

import pytest
from PIL import Image

from inference.samples import (
    MANIFEST,
    LabelError,
    SampleStore,
    StoreFull,
    resolve_label,
)

PAYER = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20


def picture(seed: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (seed % 256, (seed * 7) % 256, 90)).save(buf, fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("text, group, name, index, slug", [
    ("tabby", None, "tabby", 281, "tabby"),
    ("  Tiger_Cat ", None, "tiger cat", 282, "tiger-cat"),
    ("281", None, "tabby", 281, "tabby"),
    ("Egyptian cat", "cat", "Egyptian cat", 285, "egyptian-cat"),
    ("crane", "bird", "crane", 134, "crane-0134"),       # one name, two classes: the group picks
    ("crane", "not_animal", "crane", 517, "crane-0517"),
    ("crane-0517", None, "crane", 517, "crane-0517"),    # the folder name works too
    ("Okapi   Calf", "Other Mammal", "okapi calf", None, "okapi-calf"),
])
def test_labels_resolve(text: str, group: str | None, name: str, index: int | None, slug: str) -> None:
    label = resolve_label(text, group)
    assert (label.name, label.imagenet_index, label.slug) == (name, index, slug)
    assert label.group is not None


@pytest.mark.parametrize("text, group, fix", [
    ("", None, "give a class name"),
    ("x" * 65, None, "at most 64 characters"),
    ("9lives", None, "starting with a letter"),
    ("cat/../../etc", None, "only letters, digits"),
    ("okapi\u0000calf", None, "only letters, digits"),
    ("1000", None, "0..999"),
    ("maillot", None, "give the class index"),
    ("tabby", "dog", "drop the group or give cat"),
    ("okapi calf", "marsupial", "one of dog, cat"),
])
def test_bad_labels_name_the_fix(text: str, group: str | None, fix: str) -> None:
    with pytest.raises(LabelError) as err:
        resolve_label(text, group)
    assert fix in str(err.value) and err.value.status == 400


# --------------------------------------------------------------------------- the store


async def test_stored_once_per_label_durable_and_readable_after_reopen(tmp_path: Path) -> None:
    root = tmp_path / "samples"
    store = SampleStore(root)
    cat, cat_png = picture(1), picture(2, "PNG")
    first = await store.add(cat, "JPEG", label=resolve_label("tabby"), payer=PAYER.upper().replace("0X", "0x"))
    again = await store.add(cat, "JPEG", label=resolve_label("Tabby"), payer=OTHER)
    elsewhere = await store.add(cat, "JPEG", label=resolve_label("tiger cat"), payer=OTHER)
    png = await store.add(cat_png, "PNG", label=resolve_label("okapi", "other_mammal"), payer=PAYER,
                          channel="0x" + "11" * 32, signed_at=1_700_000_000)
    assert not first.duplicate and again.duplicate and not elsewhere.duplicate and not png.duplicate
    digest = hashlib.sha256(cat).hexdigest()
    assert first.record.path == f"tabby/{digest}.jpg" and first.record.payer == PAYER
    assert elsewhere.record.path == f"tiger-cat/{digest}.jpg"  # same bytes, another label
    assert png.record.path.startswith("okapi/") and png.record.path.endswith(".png")
    assert (root / first.record.path).read_bytes() == cat
    assert not list(root.rglob("*.tmp"))

    lines = [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]
    assert len(lines) == 3
    assert {"sha256", "label", "group", "path", "payer", "received_at"} <= set(lines[0])
    assert lines[2]["group"] == "other_mammal" and lines[2]["imagenet_index"] is None

    reopened = SampleStore(root)  # a restart: the manifest is the truth
    records = reopened.records()
    assert [(r.label, r.group) for r in records] == [("tabby", "cat"), ("tiger cat", "cat"),
                                                     ("okapi", "other_mammal")]
    assert reopened.count() == 3
    assert (await reopened.add(cat, "JPEG", label=resolve_label("tabby"), payer=PAYER)).duplicate
    assert reopened.count() == 3
    # The digest is over (sha256, label): who sent them and when does not change it.
    expected = hashlib.sha256("".join(sorted(
        f"{r.sha256}\t{r.label}\n" for r in records)).encode()).hexdigest()
    assert reopened.digest() == store.digest() == expected
    assert SampleStore(tmp_path / "empty").records() == []
    assert SampleStore(tmp_path / "empty").digest() == hashlib.sha256(b"").hexdigest()


async def test_a_new_label_needs_a_group_once_and_keeps_it(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    with pytest.raises(LabelError, match="give its group"):
        await store.add(picture(3), "JPEG", label=resolve_label("okapi calf"), payer=PAYER)
    assert not (tmp_path / MANIFEST).exists() and not list(tmp_path.rglob("*.jpg"))
    await store.add(picture(3), "JPEG", label=resolve_label("okapi calf", "other_mammal"), payer=PAYER)
    later = await store.add(picture(4), "JPEG", label=resolve_label("Okapi Calf"), payer=OTHER)
    assert later.record.group == "other_mammal"  # known from the store
    with pytest.raises(LabelError) as err:
        await store.add(picture(5), "JPEG", label=resolve_label("okapi calf", "bird"), payer=PAYER)
    assert err.value.status == 409 and err.value.code == "label_group_conflict"
    assert SampleStore(tmp_path).count() == 2


async def test_disk_bounds_refuse_without_writing(tmp_path: Path) -> None:
    a, b, c = picture(10), picture(11), picture(12)
    store = SampleStore(tmp_path, max_total_bytes=len(a) + len(b) + len(c) - 1,
                        max_payer_bytes=len(a) + len(b) - 1)
    await store.add(a, "JPEG", label=resolve_label("tabby"), payer=PAYER)
    with pytest.raises(StoreFull) as quota:
        await store.add(b, "JPEG", label=resolve_label("tabby"), payer=PAYER)
    assert quota.value.status == 507 and quota.value.code == "sample_quota_exceeded"
    await store.add(b, "JPEG", label=resolve_label("tabby"), payer=OTHER)
    with pytest.raises(StoreFull) as full:
        await store.add(c, "JPEG", label=resolve_label("tabby"), payer="0x" + "ef" * 20)
    assert full.value.code == "samples_store_full" and "--samples-max-bytes" in str(full.value)
    assert store.count() == 2 and len(list((tmp_path / "tabby").iterdir())) == 2
    # A duplicate needs no room.
    assert (await store.add(a, "JPEG", label=resolve_label("tabby"), payer=PAYER)).duplicate
    # The bounds hold across a restart: the manifest is re-read.
    with pytest.raises(StoreFull):
        await SampleStore(tmp_path, max_total_bytes=len(a) + len(b)).add(
            c, "JPEG", label=resolve_label("tabby"), payer=OTHER)


async def test_a_torn_manifest_line_and_a_file_without_its_line(tmp_path: Path) -> None:
    """A crash mid-append leaves a partial line; a crash after the rename leaves a file with
    no line. Neither is a sample, and the next writes are whole."""
    store = SampleStore(tmp_path)
    await store.add(picture(20), "JPEG", label=resolve_label("tabby"), payer=PAYER)
    with (tmp_path / MANIFEST).open("ab") as fh:  # a line that points outside the store
        fh.write(json.dumps({"sha256": "0" * 64, "label": "tabby", "group": "cat",
                             "path": "../../etc/passwd", "payer": PAYER, "received_at": 1.0,
                             "bytes": 10}).encode() + b"\n")
        fh.write(b'{"sha256":"dead')  # torn
    orphan = picture(21)
    orphan_path = tmp_path / "tabby" / f"{hashlib.sha256(orphan).hexdigest()}.jpg"
    orphan_path.write_bytes(orphan)
    reopened = SampleStore(tmp_path)
    assert reopened.count() == 1
    stored = await reopened.add(orphan, "JPEG", label=resolve_label("tabby"), payer=PAYER)
    assert not stored.duplicate  # the file alone was not a sample: now it has its line
    assert SampleStore(tmp_path).count() == 2
    lines = (tmp_path / MANIFEST).read_bytes().split(b"\n")
    assert json.loads(lines[-2])["sha256"] == hashlib.sha256(orphan).hexdigest()


async def test_an_operator_edit_of_the_manifest_is_seen_by_a_running_store(tmp_path: Path) -> None:
    """Samples moved out (their manifest lines removed, the file replaced by a rename) are
    gone for the running store too: the same image is new again, and its bytes are free."""
    a, b = picture(30), picture(31)
    store = SampleStore(tmp_path, max_total_bytes=len(a) + len(b))
    await store.add(a, "JPEG", label=resolve_label("tabby"), payer=PAYER)
    await store.add(b, "JPEG", label=resolve_label("tabby"), payer=PAYER)
    manifest = tmp_path / MANIFEST
    kept = manifest.read_text().splitlines()[1:]
    (tmp_path / "edited").write_text("".join(line + "\n" for line in kept))
    (tmp_path / "edited").replace(manifest)
    assert not (await store.add(a, "JPEG", label=resolve_label("tabby"), payer=PAYER)).duplicate
    assert store.count() == 2


def _add_in_process(root: str, seed: int) -> None:
    import asyncio

    store = SampleStore(Path(root))
    for i in range(5):
        asyncio.run(store.add(picture(seed * 100 + i), "JPEG", label=resolve_label("tabby"),
                              payer=PAYER))


def test_writers_in_several_processes_share_one_manifest(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # the children need nothing the parent has not loaded
    procs = [ctx.Process(target=_add_in_process, args=(str(tmp_path), seed)) for seed in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = SampleStore(tmp_path).records()
    assert len(records) == 15 == len((tmp_path / MANIFEST).read_text().splitlines())
