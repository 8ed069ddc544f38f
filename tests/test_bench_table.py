"""bench/table.py on the committed results: every file is in the table, the output is stable,
and ``--write`` replaces only the text between the README markers.

Runs the real script in a subprocess (as the lead will), on the real bench/results/*.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "table.py"
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_every_results_file_is_in_the_table() -> None:
    names = sorted(p.name for p in RESULTS.glob("*.json"))
    expected = {"gas.json", "verify.json", "inference.json", "gateway.json", "settlement.json"}
    assert expected <= set(names)
    run = _run()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    header = "| source | operation / metric | ours | target / reference | machine |"
    assert lines[0] == header
    for name in names:
        rows = [line for line in lines if line.startswith(f"| `{name}` |")]
        assert rows, f"{name} has no row in the table"
        for row in rows:
            assert row.count(" | ") == 4, f"a row must have 5 cells: {row}"


def test_machine_column_comes_from_each_file() -> None:
    out = _run().stdout
    for path in sorted(RESULTS.glob("*.json")):
        machine = json.loads(path.read_text()).get("machine", {})
        cpu = machine.get("cpu") or machine.get("cpu_model")
        assert cpu, f"{path.name} records no machine cpu"
        rows = [line for line in out.splitlines() if line.startswith(f"| `{path.name}` |")]
        assert all(row.rstrip(" |").split(" | ")[-1].startswith(cpu) for row in rows), path.name


def test_figures_are_the_recorded_ones() -> None:
    out = _run().stdout
    verify = json.loads((RESULTS / "verify.json").read_text())
    assert f"{verify['results_us']['verify_voucher']['p50_us']:,} µs" in out
    gas = json.loads((RESULTS / "gas.json").read_text())
    assert f"| {gas['claimWithSignature_per_channel']['100']:,} |" in out
    settlement = json.loads((RESULTS / "settlement.json").read_text())
    assert f"| {settlement['gas_per_charged_request']['claim_and_settle']:,} |" in out


def test_output_is_deterministic() -> None:
    first, second = _run(), _run()
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout


def test_write_replaces_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{START}\nold table\n{END}\nafter\n")
    run = _run("--write", str(readme))
    assert run.returncode == 0, run.stderr
    text = readme.read_text()
    assert text.startswith(f"# title\n\nbefore\n{START}\n")
    assert text.endswith(f"{END}\nafter\n")
    assert "old table" not in text
    assert _run().stdout in text
    # a second write gives the same file (idempotent)
    assert _run("--write", str(readme)).returncode == 0
    assert readme.read_text() == text


def test_write_without_markers_fails_and_leaves_the_file(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    run = _run("--write", str(readme))
    assert run.returncode == 2
    assert START in run.stderr
    assert readme.read_text() == "# no markers here\n"


def test_unknown_results_file_still_gets_a_row(tmp_path: Path) -> None:
    machine = {"machine": {"cpu": "Test CPU", "cores": 4}}
    (tmp_path / "newbench.json").write_text(json.dumps(machine))
    run = _run("--results", str(tmp_path))
    assert run.returncode == 0, run.stderr
    row = (
        "| `newbench.json` | newbench.json | no summary rows for this file | - "
        "| Test CPU, 4 cores |"
    )
    assert row in run.stdout


def _bench_module(name: str):
    """A bench/ script as a module (bench/ on sys.path while it loads: it imports _machine)."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def test_a_model_ratio_from_unequal_processes_is_not_called_met() -> None:
    """When the two model processes spent unequal CPU per request, the row says so instead of
    reporting the ratio as the target met or missed."""
    gateway, table = _bench_module("gateway"), _bench_module("table")

    def verdict(cpu_unpaid_us: float, ratio: float) -> str:
        run = {"rps": 50.0, "p50_ms": 300.0, "p99_ms": 400.0, "rounds": [],
               "server_cpu_us_per_request": cpu_unpaid_us}
        runs = {"model_unpaid": run,
                "model_paid": {**run, "rps": 50.0 * ratio, "server_cpu_us_per_request": 28_000.0}}
        summary = gateway.summarize(runs, 30.0)
        return " ".join(cell for row in table._gateway({"summary": summary, "runs": {}}) for cell in row)

    assert "model target: **not met**" in verdict(28_100.0, 0.9)
    assert "model target: met" in verdict(28_100.0, 0.99)
    assert "not decided by this run" in verdict(35_000.0, 1.25)
