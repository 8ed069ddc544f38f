"""Summarise bench/results/*.json as one Markdown table (for the README).

Every figure comes from a results file; nothing is measured here. Each row names the
operation, our figure, the target or reference it is judged against (as the results file
records it), and the machine the file says it was measured on::

    $ .venv/bin/python bench/table.py                       # print the table
    $ .venv/bin/python bench/table.py --write README.md     # replace the text between the
                                                            # bench:start and bench:end markers

The output depends only on the files' contents (sorted, no clock), so it is deterministic.
A results file this script has no summary for still gets a row, so none is ever left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["START", "END", "Row", "load_results", "render", "rows_for", "splice", "main"]

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
RESULTS = Path(__file__).resolve().parent / "results"

Row = tuple[str, str, str, str]  # (operation / metric, ours, target / reference, machine)


# --------------------------------------------------------------------------- formatting


def _n(value: Any) -> str:
    """A number as recorded, with thousands separators: `_n(19347.6) == "19,347.6"`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return format(value, ",")


def _met(flag: Any) -> str:
    return {True: "met", False: "**not met**"}.get(flag, "not recorded")


def _get(data: Any, *path: str | int) -> Any:
    """`data[path[0]][path[1]]...`, or None when any step is missing."""
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _machine(data: dict[str, Any]) -> str:
    """The results file's own machine record, shortened: "AMD EPYC, 2 cores, anvil 1.7.1"."""
    m = data.get("machine")
    if not isinstance(m, dict):
        return "not recorded"
    parts = [str(m.get("cpu") or m.get("cpu_model") or "CPU not recorded")]
    cores = m.get("cores", m.get("cores_usable"))
    if cores is not None:
        parts.append(f"{cores} cores")
    if m.get("device"):
        parts.append(f"device {m['device']}")
    if m.get("anvil"):
        parts.append(str(m["anvil"]).replace("anvil Version: ", "anvil "))
    when = data.get("when") or data.get("when_utc") or data.get("started")
    if isinstance(when, str):
        parts.append(when[:10])
    return ", ".join(parts)


# --------------------------------------------------------------------------- one extractor per file


def _gas(d: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    ours, canon = d.get("paychan", {}), d.get("canonical", {})
    per = d.get("claimWithSignature_per_channel", {})
    targets = d.get("targets_met", {})

    def target(key: str) -> str | None:
        for rule, ok in targets.items():
            if rule.split(" ")[0] == key:
                return f"target {rule.split(' ', 1)[1]}: {_met(ok)}"
        return None

    for n in sorted(per, key=int):
        ref = [target(f"claimWithSignature_per_channel_at_{n}")]
        total = canon.get(f"claimWithSignature_{n}_channels")
        if total is not None:
            ref.append(f"canonical {_n(round(total / int(n), 1))}")
        yield (
            f"gas per channel, claimWithSignature of {n}",
            _n(per[n]),
            "; ".join(r for r in ref if r) or "-",
        )
    for key, label in (
        ("deposit_erc3009_new_channel", "gas, ERC-3009 deposit opening a channel"),
        ("deposit_erc3009_top_up", "gas, ERC-3009 top-up deposit"),
        ("settle", "gas, settle"),
        ("refundWithSignature", "gas, refundWithSignature"),
    ):
        if key in ours:
            ref = [target(key)]
            if key in canon:
                ref.append(f"canonical {_n(canon[key])}")
            yield label, _n(ours[key]), "; ".join(r for r in ref if r) or "-"


def _verify(d: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    r = d.get("results_us", {})
    bare = _get(r, "bare_recover", "p50_us")
    ratio = _get(d, "p50_ratio_to_bare_recover", "verify_voucher")
    limit = _get(d, "target", "verify_voucher_p50_over_bare_recover_max")
    ref = []
    if limit is not None:
        met = _met(_get(d, "target", "met"))
        ref.append(f"target <= {_n(limit)} x bare recover ({_n(bare)} µs): {met}")
    x402 = _get(r, "x402_reference", "p50_us")
    if x402 is not None:
        ref.append(f"x402 reference {_n(x402)} µs")
    if "verify_voucher" in r:
        ours = f"{_n(r['verify_voucher']['p50_us'])} µs" + (f" ({_n(ratio)} x)" if ratio else "")
        yield "voucher verification, p50", ours, "; ".join(ref) or "-"
    for key, label in (
        ("parse_and_verify", "PAYMENT-SIGNATURE parse + verify, p50"),
        ("sign_receipt", "receipt signing, p50"),
    ):
        if key in r:
            yield label, f"{_n(r[key]['p50_us'])} µs", "-"
    for backend in ("sqlite", "redis"):
        p50 = _get(d, "ledger_accept_commit", backend, "one_channel_sequential", "p50_us")
        if p50 is not None:
            yield f"ledger accept + commit ({backend}, one channel), p50", f"{_n(p50)} µs", "-"


def _inference(d: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    t = d.get("target", {})
    if "batcher_c64_images_per_s" in t:
        yield (
            "classifier images/s, batcher at concurrency 64",
            _n(t["batcher_c64_images_per_s"]),
            f"{t.get('rule', 'target')}: ratio {_n(t.get('ratio'))}"
            + (f" (medians {_n(t['ratio_of_medians'])})" if "ratio_of_medians" in t else "")
            + f", {_met(t.get('met'))}",
        )
    if "two_resident_ratio" in t:
        yield (
            "classifier images/s, concurrency 64, two versions resident",
            _n(d.get("two_resident", {}).get("images_per_s")),
            f"ratio {_n(t['two_resident_ratio'])} (medians "
            f"{_n(t.get('two_resident_ratio_of_medians'))}); 48+16 clients split over both: "
            f"ratio {_n(t.get('split_ratio'))}",
        )
    if "best_bare_images_per_s" in t:
        yield (
            f"classifier images/s, bare model, best batch ({t.get('best_bare_batch')})",
            _n(t["best_bare_images_per_s"]),
            "-",
        )
    for point in d.get("bare", []):
        if point.get("batch") == 1 and point.get("layout") == "channels_last":
            yield "classifier latency, batch 1, p50", f"{_n(point['p50_ms'])} ms", "-"
    if isinstance(d.get("gpu"), str):
        yield "classifier on GPU", "-", d["gpu"]


_GATEWAY_RUNS = (
    "null_unpaid", "null_paid", "model_unpaid", "model_paid", "redis_paid_1w", "redis_paid_2w",
)


def _gateway(d: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    s, runs = d.get("summary", {}), d.get("runs", {})
    unit = s.get("bare_recover_us")
    limit = s.get("target_overhead_in_recovers")
    for run in ("null_paid", "null_paid_memory"):
        if f"{run}_overhead_us" not in s:
            continue
        store = "memory store" if run.endswith("memory") else "SQLite store"
        yield (
            f"HTTP payment overhead per request (null model, {store})",
            f"{_n(s[f'{run}_overhead_us'])} µs = {_n(s[f'{run}_overhead_in_recovers'])} recovers",
            f"target <= {_n(limit)} recovers of {_n(unit)} µs: "
            + _met(s.get(f"{run}_meets_overhead_target")),
        )
    total = _get(d, "payment_path_in_process", "total_without_http")
    if total is not None:
        yield (
            "payment path in process (verify, ledger, receipt signed in batches of 32), no HTTP",
            f"{_n(total['us'])} µs = {_n(total['recovers'])} recovers",
            "-",
        )
    for name in _GATEWAY_RUNS:
        r = runs.get(name)
        if r is None:
            continue
        paid = "paid" if r.get("payment") else "unpaid"
        what = f"{r.get('model')} model, {paid}, {r.get('workers')} worker(s)"
        if str(r.get("store", "")).startswith("redis"):
            what += ", Redis store"
        yield (
            f"gateway requests/s ({what}, {r.get('connections')} connections)",
            f"{_n(r['rps'])} (p50 {_n(r['p50_ms'])} ms, p99 {_n(r['p99_ms'])} ms)",
            "-",
        )
    if "model_paid_over_unpaid" in s:
        yield (
            "paid / unpaid requests/s with the real model",
            _n(s["model_paid_over_unpaid"]),
            f"model target: {_model_verdict(s)}",
        )
    if "redis_2w_over_1w" in s:
        yield "Redis store, 2 workers / 1 worker requests/s", _n(s["redis_2w_over_1w"]), "-"


def _model_verdict(s: dict[str, Any]) -> str:
    """Met / not met, or why this run cannot say (the two processes ran the model unequally)."""
    cpu = s.get("model_server_cpu_us_per_request_unpaid_paid")
    if s.get("model_runs_comparable") is False and cpu:
        return (f"not decided by this run: the unpaid process spent {cpu[0] / 1000:.1f} ms of CPU "
                f"per request, the paid one {cpu[1] / 1000:.1f} ms")
    return _met(s.get("meets_model_target"))


def _settlement(d: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    per = d.get("gas_per_charged_request", {})
    base = d.get("baseline_erc20_transfer_per_request")
    what = f"{_n(d.get('requests'))} requests over {_n(d.get('channels'))} channels"
    if "claim_and_settle" in per:
        yield (
            f"gas per charged request, claim + settle ({what})",
            _n(per["claim_and_settle"]),
            f"one ERC-20 transfer per request: {_n(base)}" if base is not None else "-",
        )
    if "including_deposits" in per:
        yield (
            "gas per charged request, deposits included",
            _n(per["including_deposits"]),
            f"one ERC-20 transfer per request: {_n(base)}" if base is not None else "-",
        )
    claims = d.get("claims", {})
    if "gas_per_channel" in claims:
        yield (
            f"gas per channel, settler claim ({_n(claims.get('txs'))} tx, "
            f"rows {claims.get('rows_per_tx')})",
            _n(claims["gas_per_channel"]),
            "-",
        )
    if "charged_total" in d and "provider_received" in d:
        yield (
            "token units charged vs received by the provider",
            f"{_n(d['charged_total'])} charged, {_n(d['provider_received'])} received",
            "equal" if d["charged_total"] == d["provider_received"] else "**differ**",
        )


def _animal_thresholds(d: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    at = d.get("all", {}).get("at_chosen", {})
    chosen = d.get("chosen", {})
    if "n" in at:
        yield (
            f"animal answer on {_n(at['n'])} labelled photos (right / unsure / wrong)",
            f"{_n(at.get('right'))} / {_n(at.get('unsure'))} / {_n(at.get('wrong'))}",
            f"thresholds chosen here: unsure below {_n(chosen.get('unsure_below'))}, "
            f"not_animal from {_n(chosen.get('not_animal_from'))}",
        )


_EXTRACTORS: dict[str, Callable[[dict[str, Any]], Iterator[tuple[str, str, str]]]] = {
    "animal_thresholds": _animal_thresholds,
    "gas": _gas,
    "verify": _verify,
    "inference": _inference,
    "gateway": _gateway,
    "settlement": _settlement,
}


# --------------------------------------------------------------------------- the table


def load_results(directory: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every `*.json` in `directory`, by file stem, in name order."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: cannot read results JSON ({exc}); rerun its benchmark")
        out[path.stem] = data if isinstance(data, dict) else {"value": data}
    return out


def rows_for(name: str, data: dict[str, Any]) -> list[Row]:
    """The table rows of one results file (at least one, so no file is ever left out)."""
    machine = _machine(data)
    extract = _EXTRACTORS.get(name)
    rows = [(op, ours, ref, machine) for op, ours, ref in (extract(data) if extract else ())]
    if not rows:
        rows = [(f"{name}.json", "no summary rows for this file", "-", machine)]
    return [tuple(_cell(c) for c in row) for row in rows]  # type: ignore[misc]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(results: dict[str, dict[str, Any]]) -> str:
    """The Markdown table (with a source column per file) for `load_results()`."""
    lines = [
        "| source | operation / metric | ours | target / reference | machine |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, data in results.items():
        for op, ours, ref, machine in rows_for(name, data):
            lines.append(f"| `{name}.json` | {op} | {ours} | {ref} | {machine} |")
    return "\n".join(lines) + "\n"


def splice(text: str, table: str) -> str:
    """`text` with everything between the bench markers replaced by `table`.

    Raises ValueError naming the fix when the markers are missing or out of order.
    """
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"add a line {START} and, below it, a line {END} where the table goes")
    head = text[: start + len(START)]
    return head + "\n\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="folder of results JSON files"
    )
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help=f"replace the text between {START} and {END} in FILE")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    if not results:
        print(f"bench/table.py: no *.json in {args.results}; run the benchmarks first",
              file=sys.stderr)
        return 2
    table = render(results)
    if args.write is None:
        sys.stdout.write(table)
        return 0
    try:
        args.write.write_text(splice(args.write.read_text(), table))
    except (OSError, ValueError) as exc:
        print(f"bench/table.py: --write {args.write}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote the benchmark table ({table.count(chr(10)) - 2} rows) into {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
