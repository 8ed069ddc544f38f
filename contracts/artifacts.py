"""Loading the committed solc artifacts (contracts/build/<Name>.json)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

BUILD_DIR = Path(__file__).resolve().parent / "build"
CONTRACT_NAMES = ("BatchSettlement", "ERC3009DepositCollector", "TestUSDC", "ModelRegistry")
TESTING_NAMES = ("ReentrantToken",)  # test-only contracts, in build/testing/


@cache
def _load(name: str) -> dict[str, Any]:
    path = BUILD_DIR / ("testing" if name in TESTING_NAMES else "") / f"{name}.json"
    if name not in CONTRACT_NAMES + TESTING_NAMES or not path.exists():
        raise KeyError(f"unknown contract {name!r}: pick one of {', '.join(CONTRACT_NAMES)}")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def artifact(name: str) -> dict[str, Any]:
    """The compiled contract: ``artifact("BatchSettlement")["abi"]`` (also bytecode, deployedBytecode)."""
    return _load(name)


def runtime_code(name: str, immutables: dict[str, bytes] | None = None) -> bytes:
    """The deployed bytecode with ``immutables`` (AST id -> 32-byte value) written in.

    Placement at a fixed address (anvil_setCode, genesis state) skips the constructor, so the
    values a constructor would have stored in the code must be patched in here.
    """
    art = _load(name)
    code = bytearray(bytes.fromhex(art["deployedBytecode"][2:]))
    refs: dict[str, list[dict[str, int]]] = art.get("immutableReferences", {})
    values = immutables or {}
    if set(refs) != set(values):
        raise ValueError(f"{name}: immutables {sorted(refs)} need values, got {sorted(values)}")
    for ast_id, places in refs.items():
        value = values[ast_id]
        if len(value) != 32:
            raise ValueError(f"{name}: immutable {ast_id} must be 32 bytes, got {len(value)}")
        for place in places:
            code[place["start"] : place["start"] + place["length"]] = value
    return bytes(code)


def collector_runtime_code(settlement: str) -> bytes:
    """ERC3009DepositCollector's runtime code bound to the settlement contract at ``settlement``."""
    refs = _load("ERC3009DepositCollector").get("immutableReferences", {})
    value = bytes.fromhex(settlement[2:]).rjust(32, b"\0")
    return runtime_code("ERC3009DepositCollector", {ast_id: value for ast_id in refs})
