"""Reading the images of a request: one raw image body, or a multipart form of several.

Size limits are enforced before and while reading (``Content-Length`` first, then aiohttp's
``client_max_size`` for chunked bodies), so an oversized upload is refused without being
buffered::

    uploads = await read_images(request, max_images=16, max_bytes=8 << 20)
    uploads[0].data, uploads[0].content_type
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

__all__ = ["ACCEPTED_IMAGES", "ACCEPTED_IMAGES_TEXT", "IMAGE_TYPES", "Upload", "UploadError", "check_content_length", "multipart_parts", "read_images"]

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"})
#: The formats the gateway classifies, content type -> file suffixes: what inference.preprocess
#: decodes (a GIF or BMP is read as an image above, then refused 415). ``paychan classify``
#: accepts exactly these, so it never pays to send a file the gateway would refuse.
ACCEPTED_IMAGES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (".jpg", ".jpeg"), "image/png": (".png",), "image/webp": (".webp",),
}
ACCEPTED_IMAGES_TEXT = "JPEG, PNG or WebP"


@dataclass(frozen=True, slots=True)
class Upload:
    """One image as received: its bytes and declared content type."""

    data: bytes
    content_type: str
    name: str = ""


class UploadError(Exception):
    """A request whose images cannot be read; ``status`` is the HTTP answer (400/413/415)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def check_content_length(request: web.Request, max_bytes: int) -> None:
    """Refuse a declared body larger than ``max_bytes`` before reading any of it."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise UploadError(413, "body_too_large", f"body of {length} bytes exceeds {max_bytes} bytes")


async def read_images(request: web.Request, *, max_images: int, max_bytes: int) -> list[Upload]:
    """The request's images; raises UploadError with the status to answer."""
    check_content_length(request, max_bytes)
    ctype = request.content_type
    if ctype in IMAGE_TYPES or ctype == "application/octet-stream":
        data = await _read_body(request)
        if not data:
            raise UploadError(400, "empty_body", "the request body is empty; send an image")
        return [Upload(data, ctype)]
    if ctype == "multipart/form-data":
        return await _read_multipart(request, max_images, max_bytes)
    raise UploadError(
        415, "unsupported_media_type",
        f"content type {ctype!r} is not an image; send image/jpeg, image/png, image/webp, "
        "image/gif or image/bmp, or multipart/form-data with image parts",
    )


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise UploadError(413, "body_too_large", exc.text or "body too large") from None


async def _read_multipart(request: web.Request, max_images: int, max_bytes: int) -> list[Upload]:
    uploads: list[Upload] = []
    total = 0
    async for part, data in multipart_parts(request, await _read_body(request)):
        ptype = (part.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ptype not in IMAGE_TYPES and ptype != "application/octet-stream":
            if part.filename is None:
                continue  # an ordinary form field; classification takes options from the query
            raise UploadError(
                415, "unsupported_media_type",
                f"part {part.name!r} has content type {ptype or 'none'!r}; send image parts",
            )
        if len(uploads) >= max_images:
            raise UploadError(413, "too_many_images", f"at most {max_images} images per request")
        total += len(data)
        if total > max_bytes:
            raise UploadError(413, "body_too_large", f"images exceed {max_bytes} bytes")
        if not data:
            raise UploadError(400, "empty_image", f"part {part.name!r} is empty")
        uploads.append(Upload(data, ptype, part.name or ""))
    if not uploads:
        raise UploadError(400, "no_images", "the multipart body holds no image part")
    return uploads


async def multipart_parts(request: web.Request, body: bytes) -> AsyncIterator[tuple[BodyPartReader, bytes]]:
    """(part, bytes) of a multipart body already read into memory.

    The body is read whole first (within the size limit) so that the request digest in the
    receipt covers exactly the bytes received, and parsed from memory afterwards.
    """
    loop = asyncio.get_running_loop()
    # A limit above the body size: the in-memory stream never asks a transport to pause.
    stream = StreamReader(BaseProtocol(loop), max(2**16, len(body) + 1), loop=loop)
    stream.feed_data(body)
    stream.feed_eof()
    try:
        reader = MultipartReader(request.headers, stream)
        while True:
            part = await reader.next()
            if part is None:
                return
            if not isinstance(part, BodyPartReader):
                raise UploadError(400, "bad_multipart", "nested multipart bodies are not accepted")
            yield part, bytes(await part.read(decode=False))
    except UploadError:
        raise
    except (ValueError, AssertionError, RuntimeError) as exc:
        raise UploadError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
