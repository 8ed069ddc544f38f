"""HTTP routes: classification (paid), pricing, models, channels, samples, health, metrics.

    app.add_routes(routes)      # done by create_app

The classification handler runs only after the x402 middleware has priced the request (its
images are read and checked by :func:`price_images`) and reserved the payment.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway import predictions
from gateway.config import GatewayConfig
from gateway.errors import api_error, json_response
from gateway.keys import (
    CLASSIFIER,
    CONFIG,
    METRICS,
    MODEL_VERSION,
    MODEL_VERSION_HASH,
    MODELS,
    PAYMENTS,
    SAMPLE_LIMITER,
    SAMPLES,
    STATE,
    TOP_K,
    UPLOADS,
)
from gateway.metrics import CONTENT_TYPE
from gateway.uploads import (
    IMAGE_TYPES,
    Upload,
    UploadError,
    check_content_length,
    multipart_parts,
    read_images,
)
from gateway.x402 import client_address, paid

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
            answer = await predictions.classify(clf, [u.data for u in uploads], request[TOP_K], deadline)
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
    return json_response(body)


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    """The model versions: with a store every one (``resident``: loaded now), else the one served."""
    return json_response({"models": await predictions.list_models(request.app[MODELS])})


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
    """Store labelled images for retraining: free, rate limited per client, size limited.

    Body: an image with ``?label=N`` (ImageNet class index or name), or multipart with a
    ``label`` field and image parts.
    """
    config = request.app[CONFIG]
    wait = request.app[SAMPLE_LIMITER].acquire(client_address(request))
    if wait > 0:
        raise api_error(429, "rate_limited", "too many samples from this address",
                        retry_after=wait)
    label_text = request.query.get("label")
    try:
        if request.content_type == "multipart/form-data":
            uploads, form_label = await _read_sample_form(request, config)
            label_text = form_label or label_text
        else:
            uploads = await read_images(request, max_images=1, max_bytes=config.max_sample_bytes)
    except UploadError as exc:
        raise api_error(exc.status, exc.code, str(exc)) from None
    if not label_text:
        raise api_error(400, "missing_label", "give the label as ?label=N or a 'label' form field")
    try:
        label = predictions.parse_label(label_text)
        for index, upload in enumerate(uploads):
            predictions.check(request.app[CLASSIFIER], upload.data, index if len(uploads) > 1 else None)
    except predictions.Rejected as exc:
        raise api_error(exc.status, exc.code, str(exc)) from None
    store = request.app[SAMPLES]
    stored = [
        await store.add(u.data, u.content_type, label=label, client=client_address(request))
        for u in uploads
    ]
    request.app[METRICS].samples.inc((), sum(not r.duplicate for r in stored))
    return json_response(
        {"stored": [{"sha256": r.sha256, "label": r.label, "duplicate": r.duplicate} for r in stored]},
        status=201,
    )


async def _read_sample_form(request: web.Request, config: GatewayConfig) -> tuple[list[Upload], str | None]:
    check_content_length(request, config.max_sample_bytes)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise UploadError(413, "body_too_large", f"samples exceed {config.max_sample_bytes} bytes") from None
    if len(body) > config.max_sample_bytes:
        raise UploadError(413, "body_too_large", f"samples exceed {config.max_sample_bytes} bytes")
    uploads: list[Upload] = []
    label: str | None = None
    async for part, data in multipart_parts(request, body):
        ptype = (part.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if part.name == "label" and ptype not in IMAGE_TYPES:
            label = data.decode("utf-8", "replace").strip()
        elif ptype in IMAGE_TYPES:
            if len(uploads) >= config.max_images:
                raise UploadError(413, "too_many_images", f"at most {config.max_images} images")
            uploads.append(Upload(data, ptype, part.name or ""))
    if not uploads:
        raise UploadError(400, "no_images", "the form holds no image part")
    return uploads, label


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
    for name, probe in probes:
        try:
            async with asyncio.timeout(2.0):
                checks[name] = bool(await probe)
        except Exception:  # an unreachable dependency is exactly what readyz reports
            checks[name] = False
    ok = not state.draining and all(checks.values())
    return json_response(
        {"ready": ok, "draining": state.draining, "checks": checks}, status=200 if ok else 503
    )


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
