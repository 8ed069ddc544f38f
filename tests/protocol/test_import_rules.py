"""The layering rules, checked on the source: who may import whom.

- ``channels.protocol`` is pure: no I/O library (web3, aiohttp, redis, sqlite3, requests,
  httpx) and no torch, neither in its source nor loaded by importing it;
- ``channels`` never imports ``gateway`` or ``inference``; ``inference`` never imports
  ``gateway`` or ``channels``;
- ``channels.protocol`` never imports ``channels.provider`` or ``channels.sdk``.

Every import counts, wherever it sits (top level, inside a function, under TYPE_CHECKING),
and relative imports are resolved to the module they name::

    imports_of(ROOT / "channels/protocol/ledger.py")   # {"channels.protocol.wire", ...}
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

IO_LIBRARIES = ("web3", "aiohttp", "redis", "sqlite3", "requests", "httpx", "torch")


def _module_name(path: Path) -> str:
    """``channels/protocol/wire.py`` -> ``channels.protocol.wire`` (a package: its __init__)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module the file at ``path`` imports, as absolute dotted names."""
    return _imports_in(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")


def _imports_in(source: str, name: str, *, is_package: bool) -> set[str]:
    """Every module ``source`` (the module ``name``) imports, as absolute dotted names.

    ``from x import y`` yields both ``x`` and ``x.y`` (``y`` may be a submodule), so a rule on
    ``channels.provider`` also catches ``from channels import provider``.
    """
    # The package a relative import starts from: the module's own package.
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _sources(package: str) -> list[Path]:
    files = sorted((ROOT / package.replace(".", "/")).rglob("*.py"))
    assert files, f"no sources under {package}: the layout moved, update this test"
    return files


def _violations(package: str, forbidden: Iterable[str]) -> list[str]:
    """``file: module`` for each import under ``package`` of a forbidden module or its children."""
    banned = tuple(forbidden)
    return [
        f"{path.relative_to(ROOT)}: imports {module}"
        for path in _sources(package)
        for module in sorted(imports_of(path))
        if any(module == b or module.startswith(b + ".") for b in banned)
    ]


def test_the_resolver_sees_relative_nested_and_guarded_imports() -> None:
    """The checker itself: relative imports, one inside a function, one under a guard."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from ..provider import store\n"
        "from . import wire\n"
        "def f():\n    import web3.main\n"
        "if TYPE_CHECKING:\n    from aiohttp import web\n"
    )
    found = _imports_in(source, "channels.protocol.probe", is_package=False)
    assert {"channels.provider", "channels.provider.store", "channels.protocol.wire",
            "web3.main", "aiohttp", "aiohttp.web"} <= found
    in_package = _imports_in("from .sdk import x", "channels", is_package=True)
    assert "channels.sdk" in in_package


def test_protocol_imports_no_io_library() -> None:
    assert _violations("channels.protocol", IO_LIBRARIES) == []


def test_importing_protocol_loads_no_io_library_nor_the_other_layers() -> None:
    """A fresh interpreter: ``import channels.protocol`` loads none of them, even indirectly."""
    out = subprocess.run(
        [sys.executable, "-c", "import channels.protocol, sys; print(sorted(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
    assert sorted(m for m in loaded if m.split(".")[0] in IO_LIBRARIES) == []
    others = ("channels.provider", "channels.sdk", "gateway", "inference")
    assert sorted(m for m in loaded if any(m == o or m.startswith(o + ".") for o in others)) == []


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("channels", ("gateway", "inference")),
        ("inference", ("gateway", "channels")),
        ("channels.protocol", ("channels.provider", "channels.sdk")),
    ],
)
def test_layers_import_only_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(package, forbidden) == []
