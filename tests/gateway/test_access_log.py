"""The access log (issue 16, item 4): one JSON line a request from ``paychan serve``, on by
default (stdout), ``--access-log FILE`` to append to a file, ``--no-access-log`` for none.

A real gateway process on anvil answers a paid request, a 402 and a 404; the lines it wrote
are parsed and every field checked.
"""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from contracts import DEV_KEYS
from tests.cli.test_cli_messages import free_port, paychan, serve_argv, served, tiny_image

pytestmark = pytest.mark.slow

KEYS = {"time", "method", "route", "path", "status", "channel", "charge", "model", "latency_ms",
        "request_id", "remote"}


def _status(url: str, method: str = "GET", data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "image/png"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_paid_402_and_404_each_write_one_json_line(anvil, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    image = tiny_image(tmp_path / "cat.png", "PNG")
    with served(serve_argv(anvil, tmp_path, port)) as (proc, _announce):
        assert _status(base + "/v1/classify", "POST", image.read_bytes()) == 402
        assert _status(base + "/nowhere") == 404
        paid = paychan("classify", str(image), "--json", "--state", str(tmp_path / "payer.sqlite"),
                       env={"PAYCHAN_KEY": DEV_KEYS[8], "PAYCHAN_GATEWAY": base})
        assert paid.returncode == 0, paid.stderr
        channel = json.loads(paid.stdout)["channel"]["channelId"]
    out = proc.stdout.read() if proc.stdout else ""
    records = [json.loads(line) for line in out.splitlines()]  # every line is one JSON object
    assert all(set(r) == KEYS for r in records)
    for r in records:
        when = datetime.datetime.fromisoformat(r["time"])
        assert r["time"].endswith("Z") and when.tzinfo is not None
        assert r["remote"] == "127.0.0.1" and r["latency_ms"] >= 0

    unpaid, missing = records[0], records[1]
    assert {k: unpaid[k] for k in ("method", "route", "path", "status", "channel", "charge", "model",
                                   "request_id")} == {
        "method": "POST", "route": "/v1/classify", "path": "/v1/classify", "status": 402,
        "channel": None, "charge": 0, "model": None, "request_id": None}
    assert {k: missing[k] for k in ("method", "route", "path", "status", "channel", "charge")} == {
        "method": "GET", "route": None, "path": "/nowhere", "status": 404, "channel": None,
        "charge": 0}
    # The CLI's requests: GET /v1/pricing (its token's units), the 402 that opens the
    # channel, then the paid answer.
    charged = [r for r in records if r["status"] == 200 and r["route"] == "/v1/classify"]
    assert len(charged) == 1
    assert charged[0]["channel"] == channel and charged[0]["charge"] == 1000
    assert charged[0]["model"] == "3bea62b725e1"  # the null model's version hash, 12 hex digits
    assert charged[0]["request_id"]
    assert [r["route"] for r in records[2:]] == ["/v1/pricing", "/v1/classify", "/v1/classify"]


def test_the_log_goes_to_a_file_or_nowhere(anvil, tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    port = free_port()
    with served(serve_argv(anvil, tmp_path, port, "--access-log", str(log))) as (proc, _):
        assert _status(f"http://127.0.0.1:{port}/healthz") == 200
    assert proc.stdout is not None and proc.stdout.read() == ""  # only the startup line went there
    [line] = log.read_text().splitlines()
    assert json.loads(line)["route"] == "/healthz"

    port = free_port()
    with served(serve_argv(anvil, tmp_path, port, "--no-access-log")) as (proc, _):
        assert _status(f"http://127.0.0.1:{port}/healthz") == 200
    assert proc.stdout is not None and proc.stdout.read() == ""
