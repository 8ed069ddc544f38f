"""Prometheus metrics in the text exposition format (version 0.0.4), without a dependency.

Counters and histograms are plain dicts keyed by label tuples, so recording costs a dict
update on the hot path; formatting happens only when ``/metrics`` is scraped::

    metrics = GatewayMetrics()
    metrics.requests.inc(("/v1/classify", "200"))
    metrics.verify_seconds.observe(41e-6)
    text = metrics.render()
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Callable, Sequence

__all__ = ["CONTENT_TYPE", "CollectorStats", "Counter", "GatewayMetrics", "Gauge", "Histogram",
           "MinuteSeries"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    parts = []
    for n, v in zip(names, values):
        v = str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{n}="{v}"')
    return "{" + ",".join(parts) + "}"


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Counter:
    """A monotonically increasing counter with optional labels."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def get(self, labels: tuple[str, ...] = ()) -> float:
        return self.values.get(labels, 0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if not self.values and not self.label_names:
            out.append(f"{self.name} 0")  # an unlabelled series exists from the start
        for labels, value in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.label_names, labels)} {_num(value)}")
        return out


class Gauge(Counter):
    """A value that goes up and down, or is read from a callback at scrape time."""

    kind = "gauge"

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (),
        read: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name, help, labels)
        self._read = read

    def set(self, value: float, labels: tuple[str, ...] = ()) -> None:
        self.values[labels] = value

    def render(self) -> list[str]:
        if self._read is not None:
            self.values[()] = float(self._read())
        return super().render()


class Histogram:
    """Cumulative-bucket histogram (no labels: one series per metric keeps observe cheap)."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, n in zip(self.bounds + [float("inf")], self.counts):
            running += n
            out.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {running}')
        out.append(f"{self.name}_sum {self.sum!r}")
        out.append(f"{self.name}_count {self.count}")
        return out


class CollectorStats:
    """The garbage collector's work, read at scrape time: passes by generation and the objects
    frozen out of its reach (``paychan serve`` freezes its startup heap; see gateway.cli.serve)."""

    def render(self) -> list[str]:
        name = "paychan_gc_collections_total"
        out = [f"# HELP {name} Garbage-collector passes by generation.", f"# TYPE {name} counter"]
        for generation, stats in enumerate(gc.get_stats()):
            out.append(f'{name}{{generation="{generation}"}} {stats["collections"]}')
        name = "paychan_gc_frozen_objects"
        out += [f"# HELP {name} Objects the garbage collector never visits (frozen at startup).",
                f"# TYPE {name} gauge", f"{name} {gc.get_freeze_count()}"]
        return out


class MinuteSeries:
    """API requests, errors and latency per wall-clock minute, for the last ``keep`` minutes
    (the operator console's charts; Prometheus has the histograms). An error is any answer
    other than 2xx and 402 (a 402 is the price, not a failure)::

        series.record(200, 0.031); series.rows()  # [(minute_start, requests, errors, mean_s, max_s)]
    """

    def __init__(self, keep: int = 180) -> None:
        self.keep = keep
        self._rows: dict[int, list[float]] = {}  # minute -> [requests, errors, sum_s, max_s]

    def record(self, status: int, seconds: float, now: float | None = None) -> None:
        minute = int((time.time() if now is None else now) // 60)
        row = self._rows.get(minute)
        if row is None:
            row = self._rows[minute] = [0, 0, 0.0, 0.0]
            if len(self._rows) > self.keep:
                del self._rows[min(self._rows)]
        row[0] += 1
        if not (200 <= status < 300 or status == 402):
            row[1] += 1
        row[2] += seconds
        if seconds > row[3]:
            row[3] = seconds

    def rows(self) -> list[tuple[float, int, int, float, float]]:
        return [(m * 60.0, int(r[0]), int(r[1]), r[2] / r[0] if r[0] else 0.0, r[3])
                for m, r in sorted(self._rows.items())]


_FAST = (10e-6, 20e-6, 40e-6, 60e-6, 100e-6, 200e-6, 500e-6, 1e-3, 5e-3, 0.02, 0.1)
_SLOW = (1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """The gateway's metric families; ``render()`` gives the /metrics body."""

    def __init__(self) -> None:
        self.requests = Counter(
            "paychan_http_requests_total", "HTTP requests by route and status.", ("route", "status")
        )
        self.payment_errors = Counter(
            "paychan_payment_rejections_total", "402 answers by x402 error code.", ("code",)
        )
        self.verify_seconds = Histogram(
            "paychan_voucher_verify_seconds", "Time to parse and verify a payment.", _FAST
        )
        self.queue_wait_seconds = Histogram(
            "paychan_queue_wait_seconds", "Time an image waited for its batch.", _SLOW
        )
        self.inference_seconds = Histogram(
            "paychan_request_inference_seconds", "Time from submit to prediction.", _SLOW
        )
        self.batch_size = Histogram(
            "paychan_batch_size", "Images per model batch.", (1, 2, 4, 8, 16, 32, 64)
        )
        self.images = Counter("paychan_images_classified_total", "Images classified.")
        self.charged = Counter(
            "paychan_charged_amount_total", "Token units charged (committed) on channels."
        )
        # Counted from the chain's Claimed / Settled events the watcher applies (gateway.earnings),
        # whoever sent the transaction: our settler, a refund's claim-first, paychan settle.
        self.claimed = Counter(
            "paychan_claimed_amount_total",
            "Token units claimed on-chain on our channels (Claimed events seen by the watcher).",
        )
        self.settled = Counter(
            "paychan_settled_amount_total",
            "Token units settled to our receiver (Settled events seen by the watcher).",
        )
        self.deposits = Counter("paychan_deposits_total", "Deposits submitted for payers.")
        self.replays = Counter(
            "paychan_idempotent_replays_total", "Answers replayed from an Idempotency-Key."
        )
        self.samples = Counter("paychan_samples_stored_total", "Labelled samples stored.")
        self.samples_refused = Counter(
            "paychan_samples_refused_total", "Samples refused (nothing stored), by error code.", ("code",)
        )
        self.collector = CollectorStats()
        self.minutes = MinuteSeries()  # the console's requests/errors/latency per minute
        self._extra: list[Counter | Gauge | Histogram] = []

    def add(self, metric: Counter | Gauge | Histogram) -> None:
        """Register one more family (e.g. a gauge read from the classifier)."""
        self._extra.append(metric)

    def render(self) -> str:
        families: list[Counter | Gauge | Histogram | CollectorStats] = [
            self.requests, self.payment_errors, self.verify_seconds, self.queue_wait_seconds,
            self.inference_seconds, self.batch_size, self.images, self.charged, self.claimed,
            self.settled, self.deposits, self.replays, self.samples, self.samples_refused, self.collector, *self._extra,
        ]
        lines: list[str] = []
        for family in families:
            lines.extend(family.render())
        return "\n".join(lines) + "\n"
