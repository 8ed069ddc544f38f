"""docs/operations.md names every gateway setting and every `paychan serve` flag, so the
operator's reference cannot silently fall behind the code."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config import GatewayConfig

OPERATIONS = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(GatewayConfig)])
def test_every_setting_is_documented(name: str) -> None:
    assert f"`{name}`" in OPERATIONS, f"docs/operations.md: add the setting `{name}` to the table"


def _serve_flags() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted({opt for action in sub.choices["serve"]._actions for opt in action.option_strings
                   if opt.startswith("--") and opt != "--help"})


@pytest.mark.parametrize("flag", _serve_flags())
def test_every_serve_flag_is_documented(flag: str) -> None:
    assert f"`{flag}" in OPERATIONS, f"docs/operations.md: document `paychan serve {flag}`"
