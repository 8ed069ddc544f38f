"""Metrics text format, admission caps and rate limiting (the sample store: tests/inference/test_samples_store.py)."""

from __future__ import annotations

from gateway.limits import InFlightCaps, RateLimiter
from gateway.metrics import GatewayMetrics


def test_metrics_render_prometheus_text() -> None:
    m = GatewayMetrics()
    m.requests.inc(("/v1/classify", "200"))
    m.requests.inc(("/v1/classify", "200"))
    m.requests.inc(("/v1/classify", "402"))
    m.verify_seconds.observe(30e-6)
    m.verify_seconds.observe(2.0)
    m.charged.inc((), 3000)
    text = m.render()
    assert '# TYPE paychan_http_requests_total counter' in text
    assert 'paychan_http_requests_total{route="/v1/classify",status="200"} 2' in text
    assert 'paychan_voucher_verify_seconds_bucket{le="4e-05"} 1' in text
    assert 'paychan_voucher_verify_seconds_bucket{le="+Inf"} 2' in text
    assert "paychan_voucher_verify_seconds_count 2" in text
    assert "paychan_charged_amount_total 3000" in text
    assert text.endswith("\n")


def test_in_flight_caps_per_channel_and_total() -> None:
    caps = InFlightCaps(per_channel=2, total=3)
    assert caps.try_enter("a") and caps.try_enter("a")
    assert not caps.try_enter("a")  # channel cap
    assert caps.try_enter("b")
    assert not caps.try_enter("c")  # total cap
    caps.leave("a")
    assert caps.try_enter("c")
    for ch in ("a", "b", "c"):
        caps.leave(ch)
    assert caps.count == 0 and caps.channel_count("a") == 0


def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(60, burst=2, clock=lambda: now[0])
    assert limiter.acquire("ip") == 0.0
    assert limiter.acquire("ip") == 0.0
    wait = limiter.acquire("ip")
    assert 0.9 < wait <= 1.0  # one token per second
    assert limiter.acquire("other") == 0.0  # per key
    now[0] += 1.0
    assert limiter.acquire("ip") == 0.0


async def test_deadlines_cancel_only_late_requests_and_tell_them_apart() -> None:
    import asyncio

    from gateway.limits import Deadlines

    deadlines = Deadlines(tick_s=0.01)
    sweep = asyncio.create_task(deadlines.run())
    loop = asyncio.get_running_loop()

    async def request(work_s: float, budget_s: float) -> str:
        task = deadlines.enter(loop.time() + budget_s)
        try:
            await asyncio.sleep(work_s)
            return "answered"
        except asyncio.CancelledError:
            if deadlines.expired(task):
                return "timeout"
            raise
        finally:
            deadlines.leave(task)

    try:
        late, on_time = await asyncio.gather(request(5.0, 0.05), request(0.01, 5.0))
        assert (late, on_time) == ("timeout", "answered")
        # a cancellation that is not the sweep's (a client gone, shutdown) still propagates
        other = asyncio.create_task(request(5.0, 5.0))
        await asyncio.sleep(0.02)
        other.cancel()
        try:
            await other
        except asyncio.CancelledError:
            pass
        assert other.cancelled()
        assert not deadlines._running and not deadlines._expired  # nothing left behind
    finally:
        sweep.cancel()
