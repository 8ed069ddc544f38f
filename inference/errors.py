"""Typed failures of the classifier, each carrying the HTTP status a server should answer.

    try:
        predictions = await classifier.classify([body])
    except ImageError as exc:          # the client's image: 400 / 413 / 415 / 422
        return web.json_response({"error": str(exc)}, status=exc.status)
    except ClassifierError as exc:     # the service: 429 / 503, with Retry-After
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return web.json_response({"error": str(exc)}, status=exc.status, headers=headers)

Every message names the problem and the fix, so it can be shown to the caller as it is.
"""

from __future__ import annotations

__all__ = [
    "AspectRatioTooLarge",
    "ClassifierClosed",
    "ClassifierError",
    "CorruptImage",
    "DeadlineExceeded",
    "EmptyImage",
    "ImageError",
    "ImageTooLarge",
    "InferenceError",
    "Overloaded",
    "ResizedTooLarge",
    "TooManyPixels",
    "UnsupportedFormat",
]


class InferenceError(Exception):
    """Base of every error this package raises on purpose; ``status`` is the HTTP code."""

    status: int = 500
    code: str = "inference_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the caller's image --------------------------------------------------------------------


class ImageError(InferenceError):
    """The image itself is unacceptable; retrying the same bytes will fail the same way.

    ``index`` is the position of the offending image in the request (None when unknown).
    """

    status = 422
    code = "invalid_image"

    def __init__(self, message: str, *, index: int | None = None) -> None:
        self.detail = message  # without the "image N: " prefix
        super().__init__(f"image {index}: {message}" if index is not None else message)
        self.index = index

    def at(self, index: int) -> ImageError:
        """The same error, naming the image's position in a multi-image request."""
        clone = type(self).__new__(type(self))
        ImageError.__init__(clone, self.detail, index=index)
        return clone


class EmptyImage(ImageError):
    """No bytes at all (HTTP 400)."""

    status = 400
    code = "empty_image"


class ImageTooLarge(ImageError):
    """More bytes than the limit (HTTP 413)."""

    status = 413
    code = "image_too_large"


class TooManyPixels(ImageError):
    """Width x height above the pixel limit, found from the header before decoding (HTTP 413).

    413 rather than 422: like a body that is too large, the fix is to send a smaller image,
    and it also stops decompression bombs (a small file that expands to gigabytes).
    """

    status = 413
    code = "too_many_pixels"


class AspectRatioTooLarge(ImageError):
    """Long side over short side above the limit, found from the header (HTTP 422).

    The resize to the model's input scales the short side up to a few hundred pixels, so a
    1x10000 strip of 3 KB would become 256 x 2,560,000 pixels (gigabytes, seconds of CPU).
    422, not 413: the image is not too big (a smaller copy has the same shape); the fix is
    to crop or pad it.
    """

    status = 422
    code = "aspect_ratio_too_large"


class ResizedTooLarge(ImageError):
    """The image as resized for the model (before the centre crop) would exceed the pixel
    limit for that stage (HTTP 422). A backstop for models with a large input size: with the
    default limits and a 224-300 px model the aspect ratio limit is always hit first.
    """

    status = 422
    code = "resized_too_large"


class UnsupportedFormat(ImageError):
    """Not a JPEG, PNG or still WebP (HTTP 415)."""

    status = 415
    code = "unsupported_format"


class CorruptImage(ImageError):
    """A supported format whose data cannot be decoded: truncated or damaged (HTTP 422)."""

    status = 422
    code = "corrupt_image"


# --- the service ---------------------------------------------------------------------------


class ClassifierError(InferenceError):
    """The service could not answer now; the same request may succeed later.

    ``retry_after`` is a whole number of seconds for a ``Retry-After`` header (None: omit it).
    """

    status = 503
    code = "classifier_unavailable"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(ClassifierError):
    """The bounded queue is full (HTTP 429 with ``Retry-After``)."""

    status = 429
    code = "overloaded"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"the classifier queue is full; retry after {retry_after} s or send fewer images",
            retry_after=retry_after,
        )


class DeadlineExceeded(ClassifierError):
    """The request's deadline passed before its batch was computed; it was dropped (HTTP 503).

    Nothing was computed for it, so a server charges nothing.
    """

    status = 503
    code = "deadline_exceeded"


class ClassifierClosed(ClassifierError):
    """The classifier is not started or is shutting down (HTTP 503)."""

    status = 503
    code = "classifier_closed"
