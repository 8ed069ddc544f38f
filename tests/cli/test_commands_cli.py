"""Every ``paychan`` subcommand: complete help, and the happy and bad-input paths of the
commands no other test file covers (devnet, deploy's errors, serve's errors).

Covered elsewhere: demo (test_demo_cli.py), classify / channel / models
(test_client_cli.py), settle (test_settle_cli.py), classify-local
(tests/inference/test_inference_cli.py), deploy on anvil (tests/contracts/test_chains.py),
serve with --workers 2 (tests/gateway/test_paid.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from contracts import CANONICAL_SETTLEMENT, DEV_KEYS
from gateway.cli import build_parser, main

PAYCHAN = str(Path(sys.executable).with_name("paychan"))  # the console script beside this Python


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_top_level_help_lists_every_command_and_the_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out
    for code in ("0  success", "2  bad usage", "3  payment refused", "4  a service could not be reached"):
        assert code in out


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_each_command_has_complete_help(name: str, capsys) -> None:
    """A one-line summary, a description with an example, and help text on every option."""
    parser = _subcommands()[name]
    assert parser.description and f"$ paychan {name}" in parser.description
    for action in parser._actions:
        if action.dest != "help" and not isinstance(action, argparse._SubParsersAction):
            assert action.help, f"paychan {name}: {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert f"usage: paychan {name}" in capsys.readouterr().out


def _rpc(url: str, method: str, params: list) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())["result"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.anvil
def test_devnet_serves_the_contracts_until_stopped() -> None:
    port = _free_port()
    proc = subprocess.Popen([PAYCHAN, "devnet", "--port", str(port), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:  # the JSON document comes first, then it runs until stopped
            lines.append(line)
            if line.startswith("}"):
                break
        info = json.loads("".join(lines))
        assert info["rpc"] == f"http://127.0.0.1:{port}" and info["settlement"] == CANONICAL_SETTLEMENT
        assert len(info["accounts"]) == 10
        assert _rpc(info["rpc"], "eth_getCode", [CANONICAL_SETTLEMENT, "latest"]) not in ("0x", None)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    with pytest.raises(OSError):  # anvil went with it
        _rpc(f"http://127.0.0.1:{port}", "eth_chainId", [])


@pytest.mark.anvil
def test_devnet_on_a_taken_port_fails_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([PAYCHAN, "devnet", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith(f"paychan devnet: anvil could not start on --port {port}: ")
    assert "Address already in use" in out.stderr and out.stderr.count("\n") == 1


def test_deploy_without_a_key_is_bad_usage(capsys, monkeypatch) -> None:
    monkeypatch.delenv("PAYCHAN_KEY", raising=False)
    assert main(["deploy", "--rpc", "http://127.0.0.1:9"]) == 2
    assert "no key: pass --key-file FILE or set PAYCHAN_KEY" in capsys.readouterr().err


def test_deploy_to_an_unreachable_rpc_says_so(capsys, monkeypatch) -> None:
    monkeypatch.setenv("PAYCHAN_KEY", DEV_KEYS[9])
    assert main(["deploy", "--rpc", f"http://127.0.0.1:{_free_port()}"]) == 4
    assert "--rpc: no JSON-RPC answers at" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--store", "memory://"], "store: 'memory://' is not sqlite:///PATH"),
        (["--price", "-5"], "price"),
        (["--key-file", "/nonexistent/provider.key"], "/nonexistent/provider.key"),
    ],
)
def test_serve_refuses_bad_settings_before_starting(argv: list[str], message: str, tmp_path: Path) -> None:
    out = subprocess.run([PAYCHAN, "serve", "--model", "null", "--port", str(_free_port()),
                          "--samples-dir", str(tmp_path / "samples"), *argv],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("paychan serve: ") and message in out.stderr
    assert out.stderr.count("\n") == 1
