"""HTTP routes: classification (paid), pricing, models, channels, samples, health, metrics.

    app.add_routes(routes)      # done by create_app

The classification handler runs only after the x402 middleware has priced the request (its
images are read and checked by :func:`price_images`) and reserved the payment.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from aiohttp import web

from channels.protocol import (
    SAMPLE_SIGNATURE,
    SampleAuthError,
    SampleAuthorization,
    check_sample_age,
    checksum_address,
    parse_sample_signature,
)
from gateway import predictions
from gateway.errors import api_error, json_response
from gateway.keys import (
    CONFIG,
    METRICS,
    MODEL_VERSION,
    MODEL_VERSION_HASH,
    MODEL_WATCH,
    MODELS,
    PAYMENTS,
    SAMPLE_LIMITER,
    SAMPLES,
    STATE,
    TOP_K,
    UPLOADS,
)
from gateway.metrics import CONTENT_TYPE
from gateway.uploads import Upload, UploadError, read_images
from gateway.x402 import paid
from inference.samples import SampleError, resolve_label

if TYPE_CHECKING:
    from inference import ImageClassifier

__all__ = ["price_images", "routes"]

routes = web.RouteTableDef()

_CHANNEL_ID = re.compile(r"^0x[0-9a-fA-F]{64}$")


# --------------------------------------------------------------------------- classification


async def price_images(request: web.Request) -> int:
    """Read, check and stash the request's images and options; returns the image count.

    Runs before any money is reserved, so a bad request costs the client nothing: an unknown
    or retired ``?model=`` is refused here too (a version that is not resident is checked with
    a resident one of the same architecture, else the default's limits: nothing is loaded
    for a request before it has paid).
    """
    config = request.app[CONFIG]
    models = request.app[MODELS]
    top_k = _int_query(request, "top_k", 5, 1, config.max_top_k)
    model = request.query.get("model") or None
    uploads = await read_images(request, max_images=config.max_images, max_bytes=config.max_body_bytes)
    try:
        version = await predictions.resolve_version(models, model)
        # Never load a model for a request that has not paid: a version of an architecture
        # with no resident peer is header-checked under a resident version's limits here, and
        # under its own when it decodes (a refusal there releases the hold: no charge).
        checker = (models.checker(version) or models.checker(None)
                   or next(iter(models.resident().values()), None))
        if checker is None:  # nothing resident at all (every load failed): load the default
            async with predictions.using(models, None) as loaded:
                _check_all(loaded, uploads)
        else:
            _check_all(checker, uploads)
    except predictions.Rejected as exc:
        raise UploadError(exc.status, exc.code, str(exc)) from None
    request[UPLOADS] = uploads
    request[TOP_K] = top_k
    request[MODEL_VERSION] = version
    return len(uploads)


def _check_all(clf: ImageClassifier, uploads: list[Upload]) -> None:
    for index, upload in enumerate(uploads):
        predictions.check(clf, upload.data, index if len(uploads) > 1 else None)


@routes.post("/v1/classify")
@paid(price_images)
async def classify(request: web.Request) -> web.Response:
    """Classify 1..16 images; the body is the image, or multipart with image parts."""
    uploads = request[UPLOADS]
    config = request.app[CONFIG]
    deadline = asyncio.get_running_loop().time() + config.request_timeout_s
    try:
        async with predictions.using(request.app[MODELS], request[MODEL_VERSION]) as clf:
            started = time.perf_counter()
            answer = await predictions.classify(clf, [u.data for u in uploads], request[TOP_K], deadline)
            request.app[METRICS].inference_seconds.observe(time.perf_counter() - started)
    except predictions.Rejected as exc:
        retry = (exc.retry_after or config.retry_after_s) if exc.status in (429, 503) else None
        raise api_error(exc.status, exc.code, str(exc), retry_after=retry) from None
    request.app[METRICS].images.inc((), len(uploads))
    request[MODEL_VERSION_HASH] = answer.version_hash
    return web.Response(body=answer.body, content_type="application/json")


# --------------------------------------------------------------------------- read-only views


@routes.get("/v1/pricing")
async def pricing(request: web.Request) -> web.Response:
    """The payment terms for one image, without a challenge."""
    config = request.app[CONFIG]
    body: dict[str, object] = {
        "x402Version": 2,
        "pricePerImage": str(config.price),
        "maxImagesPerRequest": config.max_images,
        "payment": config.payment,
    }
    if config.payment:
        body["accepts"] = [request.app[PAYMENTS].requirements(1)]
        if config.token_symbol is not None and config.token_decimals is not None:
            # for display only (gateway.tokens.format_amount): amounts stay in base units
            body["token"] = {"address": config.token, "symbol": config.token_symbol,
                             "decimals": config.token_decimals}
    return json_response(body)


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    """The model versions: with a store every one (``resident``: loaded now), else the one served;
    each row's ``registry`` is its ModelRegistry publication; ``registry`` (top level) the
    contract, ``swap`` the champion watch (gateway.model_watch)."""
    rows = await predictions.list_models(request.app[MODELS])
    body: dict[str, object] = {"models": rows}
    watch = request.app.get(MODEL_WATCH)
    if watch is not None:
        for row in rows:  # a version served without a store: published by the watch, if at all
            if "registry" not in row:  # keyed by the weights' sha256 hex, as store ids are
                row["registry"] = watch.publications.get(str(row["version"]).removeprefix("0x"))
        if watch.registry is not None:
            body["registry"] = watch.registry
        body["swap"] = watch.status()
    return json_response(body)


@routes.get("/v1/channels/{channel_id}")
async def channel(request: web.Request) -> web.Response:
    """The server's view of one channel, for its payer (public: it holds nothing secret)."""
    channel_id = request.match_info["channel_id"]
    if not _CHANNEL_ID.match(channel_id):
        raise api_error(400, "bad_channel_id", "channel id must be 0x followed by 64 hex digits")
    if not request.app[CONFIG].payment:
        raise api_error(404, "payment_disabled", "this gateway does not take payments")
    view = await request.app[PAYMENTS].channel_view(channel_id.lower())
    if view is None:
        raise api_error(404, "unknown_channel", f"no channel {channel_id} on this gateway")
    return json_response(view)


# --------------------------------------------------------------------------- samples


@routes.post("/v1/samples")
async def samples(request: web.Request) -> web.Response:
    """Store one labelled image for retraining, attributed to the payer who signed it.

    Body: the image (JPEG, PNG or WebP; the checks of /v1/classify). Header
    ``SAMPLE-SIGNATURE``: the payer's EIP-712 signature over the image's sha256, the label,
    its group and the time (``channels.protocol.sample_auth``), from a channel with a deposit
    here. Free; per payer rate limited and bounded on disk. 201 stored, 200 already stored.
    Every refusal is a JSON error, counted by code, and stores nothing.
    """
    config = request.app[CONFIG]
    try:
        payer, auth = await _sample_payer(request)
        wait = request.app[SAMPLE_LIMITER].acquire(payer)
        if wait > 0:
            raise _refused(request, 429, "rate_limited", f"payer {payer} sent more than "
                           f"{config.samples_burst} samples at once or {config.samples_per_minute} "
                           "a minute; retry after Retry-After seconds", retry_after=wait)
        label = resolve_label(auth.label, auth.group or None)
        [upload] = await read_images(request, max_images=1, max_bytes=config.max_sample_bytes)
        if hashlib.sha256(upload.data).digest() != auth.image_sha256:
            raise _refused(request, 400, "sample_digest_mismatch", "the body's sha256 is not the "
                           "signed imageSha256: sign the exact bytes you send")
        info = predictions.check(_sample_checker(request), upload.data)
        stored = await request.app[SAMPLES].add(
            upload.data, info.format, label=label, payer=payer,
            channel="0x" + auth.channel_id.hex(), signed_at=auth.signed_at,
        )
    except SampleAuthError as exc:
        status = 400 if exc.code == "bad_sample_signature" else 401
        raise _refused(request, status, exc.code, str(exc), field=exc.field) from None
    except (SampleError, UploadError, predictions.Rejected) as exc:
        raise _refused(request, exc.status, exc.code, str(exc)) from None
    record = stored.record
    if not stored.duplicate:
        request.app[METRICS].samples.inc()
    return json_response({"sample": {
        "sha256": record.sha256, "label": record.label, "group": record.group,
        "imagenetIndex": record.imagenet_index, "payer": record.payer,
        "duplicate": stored.duplicate,
    }}, status=200 if stored.duplicate else 201)


async def _sample_payer(request: web.Request) -> tuple[str, SampleAuthorization]:
    """The payer (0x address, lower case) whose channel's key signed this sample, and what it
    signed. Only a channel funded here counts: anyone can make a key."""
    gate = request.app.get(PAYMENTS)
    if gate is None:
        raise _refused(request, 403, "samples_need_payment", "this gateway takes no payments, so "
                       "no sample can be attributed to a payer; send samples to a paying gateway")
    header = request.headers.get(SAMPLE_SIGNATURE)
    if not header:
        raise _refused(request, 401, "sample_signature_required", f"send the {SAMPLE_SIGNATURE} "
                       "header: the payer's signature over the image, label and group (`paychan "
                       "samples add`, or channels.sdk add_sample, makes it)")
    auth = parse_sample_signature(header)
    check_sample_age(auth.signed_at, now=time.time(),
                     max_age_s=request.app[CONFIG].sample_signature_max_age_s)
    signer = auth.signer(gate.terms.chain_id, gate.terms.settlement)
    state = await gate.store.get(auth.channel_id)
    cid = "0x" + auth.channel_id.hex()
    if state is None or state.config is None or state.balance <= 0:
        raise _refused(request, 403, "unknown_payer", f"channel {cid} holds no deposit at this "
                       "gateway; samples are taken from payers with a funded channel here: pay "
                       "for a classification first (paychan classify)")
    if signer not in (state.config.payer_authorizer, state.config.payer):
        raise SampleAuthError("sample_signature_invalid", "signature",
                              f"signed by {checksum_address(signer)}, not by channel {cid}'s payer "
                              "or payerAuthorizer; sign with the key that signs its vouchers")
    return "0x" + state.config.payer.hex(), auth


def _sample_checker(request: web.Request) -> ImageClassifier:
    """The default version's classifier: its header checks are classification's."""
    models = request.app[MODELS]
    checker = models.checker(None) or next(iter(models.resident().values()), None)
    if checker is None:
        raise _refused(request, 503, "model_unavailable", "no model is loaded to check the "
                       "image; retry later", retry_after=request.app[CONFIG].retry_after_s)
    return checker


def _refused(request: web.Request, status: int, code: str, message: str, *,
             retry_after: float | None = None, **extra: object) -> web.HTTPException:
    """A sample's refusal (``paychan_samples_refused_total{code}``), to raise."""
    request.app[METRICS].samples_refused.inc((code,))
    return api_error(status, code, message, retry_after=retry_after, **extra)


# --------------------------------------------------------------------------- operations


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: model warm, chain and store reachable, not draining."""
    state = request.app[STATE]
    checks = dict(state.checks)
    probes: list[tuple[str, Awaitable[bool]]] = []
    gate = request.app.get(PAYMENTS)  # absent on a free gateway
    if gate is not None:
        probes = [("store", gate.ping_store()), ("chain", gate.ping_chain())]
    reasons: dict[str, str] = {}
    for name, probe in probes:
        try:
            async with asyncio.timeout(2.0):
                checks[name] = bool(await probe)
        except Exception as exc:  # noqa: BLE001 - an unreachable dependency is what readyz reports
            checks[name] = False
            reasons[name] = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
    ok = not state.draining and all(checks.values())
    body: dict[str, object] = {"ready": ok, "draining": state.draining, "checks": checks}
    if reasons:  # why each failed probe failed ("ConnectionError: ... refused")
        body["reasons"] = reasons
    watch = request.app.get(MODEL_WATCH)
    if watch is not None:  # a refused swap leaves the old champion serving: shown, still ready
        body["models"] = watch.status()
    return json_response(body, status=200 if ok else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].render()
    return web.Response(text=text, headers={"Content-Type": CONTENT_TYPE})


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UploadError(400, f"bad_{name}", f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise UploadError(400, f"bad_{name}", f"{name} must be between {low} and {high}, got {value}")
    return value
