"""A command line that never lies (issue 16, item 5): every message here is asserted in full.

Each case runs ``paychan`` as a user would, in its own process, against a real anvil: the
port check, the token check (a contract that is not a token, an address with no code), a
URL without a scheme, the startup line, ``--price 0.001USDC``, ``classify``'s formats and
exit code, ``finalize`` too early, ``PAYCHAN_GATEWAY``, and the JSON errors of ``--json``.
"""

from __future__ import annotations

import datetime
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from contracts import DEV_KEYS, Anvil
from gateway.tokens import format_amount, parse_amount

PAYCHAN = str(Path(sys.executable).with_name("paychan"))  # the console script beside this Python
PROVIDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # DEV_KEYS[0]'s address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def paychan(*argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``paychan ARGV`` in a clean environment (no PAYCHAN_* but what ``env`` adds)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PAYCHAN_")}
    return subprocess.run([PAYCHAN, *argv], capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})}, check=False)


def serve_argv(anvil: Anvil, tmp_path: Path, port: int, *extra: str) -> list[str]:
    key_file = tmp_path / "provider.key"
    key_file.write_text(DEV_KEYS[0])
    return ["serve", "--rpc", anvil.url, "--key-file", str(key_file),
            "--token", str(anvil.deployment.token), "--model", "null", "--port", str(port),
            "--store", f"sqlite:///{tmp_path / f'ledger-{port}.sqlite3'}",
            "--samples-dir", str(tmp_path / "samples"), "--no-settler", *extra]


@contextmanager
def served(argv: list[str], timeout_s: float = 90.0) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``paychan serve`` running until the block ends; yields (process, its startup line)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PAYCHAN_")}
    proc = subprocess.Popen([PAYCHAN, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=base)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        assert ready, f"no startup line in {timeout_s} s"
        line = proc.stdout.readline()
        assert line, f"serve exited: {proc.wait(5)} {proc.stderr.read() if proc.stderr else ''}"
        yield proc, line.rstrip("\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tiny_image(path: Path, fmt: str) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 48), (180, 120, 40)).save(path, fmt)
    return path


# ---------------------------------------------------------------------------- amounts


def test_amounts_are_token_units_with_base_units_beside() -> None:
    assert format_amount(1000, 6, "USDC") == "0.001 USDC (1000 base units)"
    assert format_amount(2_500_000, 6, "USDC") == "2.5 USDC (2500000 base units)"
    assert format_amount(1, 6, "USDC") == "0.000001 USDC (1 base unit)"
    assert format_amount(0, 6, "USDC") == "0 USDC (0 base units)"
    assert format_amount(1000) == "1000 base units"
    assert parse_amount("0.001USDC", 6, "USDC") == 1000
    assert parse_amount("0.001 usdc", 6, "USDC") == 1000
    assert parse_amount("1000", 6, "USDC") == 1000
    with pytest.raises(ValueError, match=r"^price: '0.001EUR' is in EUR, but the token is USDC; "
                                         r"write 0.001USDC, or base units as a whole number$"):
        parse_amount("0.001EUR", 6, "USDC")
    with pytest.raises(ValueError, match=r"^price: '0.0000001USDC' is finer than USDC's 6 decimals"):
        parse_amount("0.0000001USDC", 6, "USDC")
    with pytest.raises(ValueError, match=r"has a decimal point but no symbol"):
        parse_amount("0.5", 6, "USDC")


# ---------------------------------------------------------------------------- serve


def test_serve_refuses_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--no-payment", "--model", "null", "--port", str(port),
                "--samples-dir", str(tmp_path / "samples")]
        out = paychan(*argv)
        as_json = paychan(*argv, "--json")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"paychan serve: port {port} on 127.0.0.1 is in use; pick another with --port\n"
    assert as_json.returncode == 2 and as_json.stderr == ""
    assert json.loads(as_json.stdout) == {
        "error": {"code": "port_in_use",
                  "message": f"port {port} on 127.0.0.1 is in use; pick another with --port"},
        "exit_code": 2,
    }


def test_serve_refuses_a_contract_that_is_not_a_token(anvil: Anvil, tmp_path: Path) -> None:
    registry = str(anvil.deployment.registry)  # a contract, but no decimals()/symbol()
    argv = serve_argv(anvil, tmp_path, free_port())
    argv[argv.index("--token") + 1] = registry
    out = paychan(*argv)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        f"paychan serve: token: the contract at {registry} is not an ERC-20 token (decimals() "
        "and symbol() do not answer); pass the address of the payment token (an ERC-20 with "
        "EIP-3009, e.g. USDC)\n")


def test_serve_refuses_an_address_without_code_as_json(anvil: Anvil, tmp_path: Path) -> None:
    nobody = "0x000000000000000000000000000000000000dEaD"
    argv = serve_argv(anvil, tmp_path, free_port(), "--json")
    argv[argv.index("--token") + 1] = nobody
    out = paychan(*argv)
    assert out.returncode == 2 and out.stderr == ""
    assert json.loads(out.stdout) == {
        "error": {"code": "not_a_token",
                  "message": f"token: no contract at {nobody} on chain 31337; pass the address "
                             "of the payment token (an ERC-20 with EIP-3009, e.g. USDC)"},
        "exit_code": 2,
    }


def test_serve_refuses_an_rpc_url_without_a_scheme(anvil: Anvil, tmp_path: Path) -> None:
    argv = serve_argv(anvil, tmp_path, free_port())
    argv[argv.index("--rpc") + 1] = "127.0.0.1:8545"
    out = paychan(*argv)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        "paychan serve: rpc_url: '127.0.0.1:8545' has no scheme; pass --rpc http://127.0.0.1:8545 "
        "(or https://; also PAYCHAN_RPC_URL or `rpc_url = ...` in the TOML file)\n")


def test_serve_refuses_a_price_in_another_token(anvil: Anvil, tmp_path: Path) -> None:
    out = paychan(*serve_argv(anvil, tmp_path, free_port(), "--price", "0.001EUR"))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == ("paychan serve: price: '0.001EUR' is in EUR, but the token is USDC; "
                          "write 0.001USDC, or base units as a whole number\n")


def test_serve_announces_price_token_receiver_and_model(anvil: Anvil, tmp_path: Path) -> None:
    port = free_port()
    token = str(anvil.deployment.token)
    store = f"sqlite:///{tmp_path / f'ledger-{port}.sqlite3'}"
    with served(serve_argv(anvil, tmp_path, port, "--price", "0.002USDC", "--no-access-log")) as (_, line):
        assert line == (
            f"paychan gateway on http://127.0.0.1:{port}: price 0.002 USDC (2000 base units) per "
            f"image, token USDC {token}, receiver {PROVIDER}, model null-3bea62b725e1 (null); "
            f"1 worker(s), store {store}")
        # The port answers once announced, and the pricing names the token it was checked as.
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/pricing", timeout=10) as r:
            pricing = json.load(r)
        assert pricing["pricePerImage"] == "2000"
        assert pricing["token"] == {"address": token, "symbol": "USDC", "decimals": 6}


def test_serve_takes_a_token_units_price_from_the_toml_file(anvil: Anvil, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nprice = "0.003USDC"\n')
    with served(serve_argv(anvil, tmp_path, port, "--config", str(config), "--json",
                           "--no-access-log")) as (_, line):
        assert json.loads(line)["price"] == {"base_units": "3000",
                                             "text": "0.003 USDC (3000 base units)"}
    # The flag still outranks the file.
    port = free_port()
    with served(serve_argv(anvil, tmp_path, port, "--config", str(config), "--price", "1500",
                           "--json", "--no-access-log")) as (_, line):
        assert json.loads(line)["price"]["base_units"] == "1500"


def test_serve_announces_as_json(anvil: Anvil, tmp_path: Path) -> None:
    port = free_port()
    with served(serve_argv(anvil, tmp_path, port, "--json", "--no-access-log")) as (_, line):
        announce = json.loads(line)
    assert announce["url"] == f"http://127.0.0.1:{port}"
    assert announce["price"] == {"base_units": "1000", "text": "0.001 USDC (1000 base units)"}
    assert announce["token"] == {"address": str(anvil.deployment.token), "symbol": "USDC", "decimals": 6}
    assert announce["receiver"] == PROVIDER
    assert announce["model"] == {"id": "null-3bea62b725e1", "architecture": "null"}


# ---------------------------------------------------------------------------- usage errors


def test_a_gateway_url_without_a_scheme_is_refused(tmp_path: Path) -> None:
    image = tiny_image(tmp_path / "a.png", "PNG")
    out = paychan("classify", str(image), "--gateway", "localhost:8402")
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == (
        "paychan classify: argument --gateway/--url: 'localhost:8402' has no scheme; write it as "
        "http://localhost:8402 (or https://)")
    as_json = paychan("classify", str(image), "--gateway", "localhost:8402", "--json")
    assert as_json.returncode == 2 and as_json.stderr == ""
    assert json.loads(as_json.stdout) == {
        "error": {"code": "usage",
                  "message": "argument --gateway/--url: 'localhost:8402' has no scheme; write it "
                             "as http://localhost:8402 (or https://)"},
        "exit_code": 2,
    }


def test_settle_refuses_an_rpc_url_without_a_scheme(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    ledger.write_bytes(b"")
    out = paychan("settle", "--rpc", "localhost:8545", "--token", "0x" + "11" * 20,
                  "--store", f"sqlite:///{ledger}", env={"PAYCHAN_KEY": DEV_KEYS[0]})
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        "paychan settle: rpc_url: 'localhost:8545' has no scheme; pass --rpc http://localhost:8545 "
        "(or https://; also PAYCHAN_RPC_URL or `rpc_url = ...` in the TOML file)\n")


def test_classify_refuses_a_format_the_gateway_refuses_before_paying(tmp_path: Path) -> None:
    gif = tiny_image(tmp_path / "a.gif", "GIF")
    # PAYCHAN_GATEWAY stands in for --gateway (the port is closed: nothing is sent anyway)
    env = {"PAYCHAN_KEY": DEV_KEYS[1], "PAYCHAN_GATEWAY": f"http://127.0.0.1:{free_port()}"}
    out = paychan("classify", str(gif), "--state", str(tmp_path / "payer.sqlite"), env=env)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (f"paychan classify: {gif}: a GIF image; the gateway accepts JPEG, PNG "
                          "or WebP (convert it first; nothing was paid)\n")
    folder = tmp_path / "gifs"
    folder.mkdir()
    tiny_image(folder / "b.bmp", "BMP")
    out = paychan("classify", str(folder), "--state", str(tmp_path / "payer.sqlite"), env=env)
    assert out.returncode == 2
    assert out.stderr == (f"paychan classify: {folder}: no JPEG, PNG or WebP files in this folder "
                          "(.jpeg, .jpg, .png, .webp)\n")


def test_the_gateway_and_classify_accept_the_same_formats(tmp_path: Path) -> None:
    """One list (gateway.uploads.ACCEPTED_IMAGES) is what inference decodes, no more, no less."""
    from gateway.uploads import ACCEPTED_IMAGES
    from inference.errors import UnsupportedFormat
    from inference.preprocess import check_image

    accepted = set()
    for fmt, content_type in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"),
                              ("GIF", "image/gif"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")):
        data = tiny_image(tmp_path / f"x.{fmt.lower()}", fmt).read_bytes()
        try:
            check_image(data)
        except UnsupportedFormat:
            continue
        accepted.add(content_type)
    assert accepted == set(ACCEPTED_IMAGES)


# ---------------------------------------------------------------------------- with a gateway


@pytest.fixture(scope="module")
def gateway(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway")
    port = free_port()
    with served(serve_argv(anvil, tmp, port, "--no-access-log")):
        yield f"http://127.0.0.1:{port}"


def test_classify_exits_2_when_any_image_was_refused(gateway: str, tmp_path: Path) -> None:
    good = tiny_image(tmp_path / "good.png", "PNG")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + bytes(200))  # a JPEG signature, then nothing
    env = {"PAYCHAN_KEY": DEV_KEYS[1], "PAYCHAN_GATEWAY": gateway}  # no --gateway: the env's
    state = str(tmp_path / "payer.sqlite")
    out = paychan("classify", str(good), str(broken), "--state", state, "--json", env=env)
    assert out.returncode == 2, out.stderr
    data = json.loads(out.stdout)
    assert (data["exit_code"], data["failed"], data["charged"], data["gateway"]) == (2, 1, "1000", gateway)
    assert data["images"][1]["status"] == 422 and data["images"][1]["charged"] == "0"
    text = paychan("classify", str(good), str(broken), "--state", state, env=env)
    assert text.returncode == 2
    lines = text.stdout.splitlines()
    assert lines[0] == (f"{good}: cat 100% (tiger cat 100%)  cost 0.001 USDC (1000 base units)")
    assert lines[1].startswith(f"{broken}: refused, not charged: HTTP 422 corrupt_image: ")
    cid = data["channel"]["channelId"]
    assert lines[2] == (f"1 image(s), charged 0.001 USDC (1000 base units); 1 refused, not charged; "
                        f"channel {cid[:10]}… holds 0.098 USDC (98000 base units) unspent")
    # channel list honours PAYCHAN_GATEWAY too: the gateway's view and its token's units
    listed = paychan("channel", "list", "--state", state, env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == (
        f"{cid[:10]}…{cid[-8:]}  balance 0.1 USDC (100000 base units), charged 0.002 USDC "
        "(2000 base units), remaining 0.098 USDC (98000 base units); open, gateway charged "
        "0.002 USDC (2000 base units)\n")


def test_finalize_too_early_says_how_long_is_left(anvil: Anvil, gateway: str, tmp_path: Path) -> None:
    image = tiny_image(tmp_path / "good.png", "PNG")
    env = {"PAYCHAN_KEY": DEV_KEYS[2], "PAYCHAN_GATEWAY": gateway}
    state = str(tmp_path / "payer.sqlite")
    assert paychan("classify", str(image), "--state", state, env=env).returncode == 0
    started = paychan("channel", "withdraw", "initiate", "--rpc", anvil.url, "--state", state,
                      "--json", env=env)
    assert started.returncode == 0, started.stderr
    ready_at = json.loads(started.stdout)["readyAt"]
    at = datetime.datetime.fromtimestamp(ready_at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # No block is mined in between (anvil mines on transactions only, and a reverting
    # finalize sends none), so by the chain's clock the whole 900 s delay is left.
    out = paychan("channel", "withdraw", "finalize", "--rpc", anvil.url, "--state", state, env=env)
    assert (out.returncode, out.stdout) == (1, "")
    message = (f"withdrawal can be finalized in 15m 00s (at {at}, by the chain's clock); "
               "run paychan channel withdraw finalize again then")
    assert out.stderr == f"paychan channel withdraw: {message}\n"
    as_json = paychan("channel", "withdraw", "finalize", "--rpc", anvil.url, "--state", state,
                      "--json", env=env)
    assert as_json.returncode == 1 and as_json.stderr == ""
    assert json.loads(as_json.stdout) == {"error": {"code": "withdraw_delay", "message": message},
                                          "exit_code": 1}


def test_no_traceback_escapes_an_unexpected_failure(tmp_path: Path) -> None:
    """A failure nobody named still ends in one line (a state file that is not SQLite)."""
    state = tmp_path / "payer.sqlite"
    state.write_bytes(b"this is not a database" * 100)
    out = paychan("channel", "list", "--state", str(state))
    assert out.returncode in (1, 2)
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert out.stderr.startswith("paychan channel list: ")


def test_help_still_exits_0() -> None:
    out = paychan("serve", "--help")
    assert out.returncode == 0 and "--access-log" in out.stdout and "0.001USDC" in out.stdout
