"""Image bytes to the model's input tensor, with limits checked before anything is decoded.

    limits = ImageLimits(max_bytes=10_000_000, max_pixels=40_000_000, max_aspect_ratio=10.0)
    info = check_image(body, limits)            # header only: format, size; raises ImageError
    pre = Preprocessor(data_config, limits)     # data_config from timm's resolve_data_config
    pre.check(body)                             # the same, plus the size after the model's resize
    tensor = pre(body)                          # float32 (3, H, W), normalized for the model

Every limit is read from the header (Pillow's ``Image.open`` is lazy), in ``_open``: the one
place the rules live, used by both the check before payment and the decode itself.

JPEG, PNG and still WebP are accepted. JPEGs decode in draft mode at the smallest DCT scale
that still covers the resize target (up to 8x less work for big photos), EXIF orientation is
applied, and everything becomes RGB (alpha composited over white, 16-bit scaled to 8-bit).
"""

from __future__ import annotations

import dataclasses
import io
import math
from struct import error as struct_error  # Pillow raises it on some damaged EXIF
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inference.errors import (
    AspectRatioTooLarge,
    CorruptImage,
    EmptyImage,
    ImageTooLarge,
    ResizedTooLarge,
    TooManyPixels,
    UnsupportedFormat,
)

if TYPE_CHECKING:
    import torch

__all__ = ["ImageInfo", "ImageLimits", "Preprocessor", "check_image", "resized_size"]

# Magic numbers of the accepted formats: we sniff them ourselves so that "not an image we take"
# (415) is told apart from "one of ours but damaged" (422) before Pillow parses anything.
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("JPEG", b"\xff\xd8\xff", 0),
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("WEBP", b"WEBP", 8),  # after b"RIFF" + 4-byte length
)
_ACCEPTED = "JPEG, PNG or WebP"


# timm's crop_pct when a data config names none (the short side goes to input / crop_pct).
_TIMM_DEFAULT_CROP_PCT = 0.875


@dataclasses.dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an upload may be, all read from the header before any pixel is decoded.

        ImageLimits()                          # 10 MB, 40 MP, 10:1, 4 MP after the resize
        ImageLimits(max_aspect_ratio=4.0)      # a stricter gateway

    ``max_pixels`` bounds the decode (width x height). ``max_aspect_ratio`` (long side over
    short side) and ``max_resized_pixels`` bound the resize to the model's input, which
    scales the *short* side to a few hundred pixels: a 1x10000 strip passes the pixel count
    and then becomes 256 x 2,560,000 pixels (2.6 GB, 10 s of CPU) before the centre crop.
    """

    max_bytes: int = 10_000_000
    max_pixels: int = 40_000_000
    # 10:1 keeps phone panoramas (about 3:1 to 8:1), 32:9 and triple-monitor screenshots
    # (3.6:1, 5.3:1) and web banners (728x90 is 8.1:1). Past it the model's centre crop sees
    # under a tenth of the picture, and the resize costs grow with the ratio.
    max_aspect_ratio: float = 10.0
    # The resized picture before its centre crop (12 MB as RGB). At 10:1 a 224 px model
    # (short side 256) makes 655,360 pixels; this binds first only where the resized short
    # side is above 632 px (inputs of about 560 px and more).
    max_resized_pixels: int = 4_000_000

    def __post_init__(self) -> None:
        if self.max_aspect_ratio < 1.0:
            raise ValueError(f"max_aspect_ratio={self.max_aspect_ratio}: must be at least 1 "
                             "(long side over short side)")


DEFAULT_LIMITS = ImageLimits()


@dataclasses.dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the header says: format ("JPEG", "PNG", "WEBP"), size and Pillow mode."""

    format: str
    width: int
    height: int
    mode: str


def _sniff(data: bytes) -> str | None:
    for fmt, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if fmt == "WEBP" and data[:4] != b"RIFF":
                continue
            return fmt
    return None


def _describe_unknown(data: bytes) -> str:
    """A short guess at what an unsupported upload is, for the error message."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "a GIF"
    if data[:2] in (b"II", b"MM") and data[2:4] in (b"*\x00", b"\x00*"):
        return "a TIFF"
    if data[:2] == b"BM":
        return "a BMP"
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "a HEIF/AVIF"
    head = data[:512]
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "not an image we recognise"


def resized_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The size the model's resize gives before its centre crop: the short side becomes
    ``side`` and the long side keeps the ratio (torchvision ``Resize(side)``, timm's eval).

        resized_size(1, 10_000, 256)       # (256, 2_560_000)
        resized_size(4000, 3000, 256)      # (341, 256)
    """
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def _ratio_text(long: int, short: int) -> str:
    """``long / short`` for a message, rounded up so that it never reads as the limit itself.

        _ratio_text(10_000, 1)     # "10,000"
        _ratio_text(2001, 200)     # "10.01"
    """
    ratio = math.ceil(long / short * 100) / 100
    return f"{ratio:,.2f}".rstrip("0").rstrip(".")


def _check_shape(width: int, height: int, limits: ImageLimits, resize_side: int | None) -> None:
    """Refuse a shape that the resize to the model's input would blow up; header numbers only.

        _check_shape(1, 10_000, DEFAULT_LIMITS, 256)     # raises AspectRatioTooLarge
        _check_shape(640, 480, DEFAULT_LIMITS, 256)      # passes

    ``resize_side`` is the short side after the resize (None: the model is not known, and
    only the aspect ratio is checked).
    """
    long, short = max(width, height), min(width, height)
    if long > limits.max_aspect_ratio * short:
        limit = f"{limits.max_aspect_ratio:g}:1"
        raise AspectRatioTooLarge(
            f"the image is {width}x{height}: aspect ratio {_ratio_text(long, short)}:1 exceeds "
            f"the {limit} limit; crop or pad it to at most {limit}"
        )
    if resize_side is None:
        return
    new_width, new_height = resized_size(width, height, resize_side)
    if new_width * new_height > limits.max_resized_pixels:
        raise ResizedTooLarge(
            f"the image is {width}x{height}: resized for the model (short side {resize_side} px) "
            f"it becomes {new_width}x{new_height} = {new_width * new_height:,} pixels, above the "
            f"limit of {limits.max_resized_pixels:,}; crop or pad it closer to square"
        )


def _open(data: bytes, limits: ImageLimits, resize_side: int | None = None) -> Image.Image:
    """Open lazily (header only) and apply every limit; raises a typed ImageError.

    ``resize_side``: the short side after the model's resize, for ``max_resized_pixels``.
    """
    if not data:
        raise EmptyImage("the image is empty (0 bytes); send the image file as the request body")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"the image is {len(data):,} bytes, above the limit of {limits.max_bytes:,}; "
            "resize or recompress it"
        )
    fmt = _sniff(data)
    if fmt is None:
        raise UnsupportedFormat(
            f"the upload is {_describe_unknown(data)}, not a {_ACCEPTED} image; "
            f"convert it to {_ACCEPTED}"
        )
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        # Pillow's own guard fires at open for sizes far above ours; same answer as ours.
        raise TooManyPixels(
            f"the {fmt} header claims far more than {limits.max_pixels:,} pixels; "
            "send an image of at most that many pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(
            f"the {fmt} header cannot be parsed ({exc}); re-export the image and send it again"
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"the {fmt} header gives a size of {width}x{height}; re-export the image")
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"the image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{limits.max_pixels:,}; downscale it"
        )
    _check_shape(width, height, limits, resize_side)
    # JPEGs may carry extra pictures (MPO: phones store depth maps or previews); the first
    # is the photo. Only PNG and WebP frames are an animation.
    if fmt != "JPEG" and getattr(image, "is_animated", False):
        raise UnsupportedFormat(
            f"the {fmt} is animated ({getattr(image, 'n_frames', '?')} frames); "
            "send one still frame as a JPEG, PNG or WebP"
        )
    return image


def check_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS,
                resize_side: int | None = None) -> ImageInfo:
    """Validate an upload from its header alone (tens of microseconds), before paying for work.

        info = check_image(body)          # raises EmptyImage, ImageTooLarge, TooManyPixels,
        print(info.width, info.height)    # AspectRatioTooLarge, UnsupportedFormat or CorruptImage
        check_image(body, resize_side=256)    # ... or ResizedTooLarge (Preprocessor.check)

    Damage past the header (a truncated JPEG) is found only by decoding, in ``Preprocessor``.
    """
    image = _open(data, limits, resize_side)
    fmt = "JPEG" if image.format == "MPO" else image.format or ""
    return ImageInfo(format=fmt, width=image.size[0], height=image.size[1], mode=image.mode)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded mode to 8-bit RGB, keeping what a person would see."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale: Pillow's convert() clips at 255 (mostly white); scale instead.
        array = np.asarray(image, dtype=np.uint32 if mode == "I" else np.uint16)
        top: float = 65535 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255
        array = (array.astype(np.float32) * (255.0 / top)).round().clip(0, 255)
        return Image.fromarray(array.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        peak = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
        scaled = (values * (255.0 / peak)).round().clip(0, 255)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels hold arbitrary colour underneath; show them as a white page would.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


class Preprocessor:
    """Bytes to a normalized float32 tensor (3, H, W) for one model's data config.

        pre = Preprocessor(resolve_data_config(model=model))
        batch = torch.stack([pre(b) for b in bodies])

    Thread-safe: Pillow releases the GIL while decoding, so a small thread pool scales.
    """

    def __init__(self, data_config: dict[str, Any], limits: ImageLimits = DEFAULT_LIMITS) -> None:
        from timm.data.transforms_factory import create_transform

        self.data_config = dict(data_config)
        self.limits = limits
        _, height, width = self.data_config["input_size"]
        self.input_size: tuple[int, int] = (height, width)
        # timm's eval transform: resize the short side to size / crop_pct, centre crop, normalize.
        self._transform = create_transform(**self.data_config, is_training=False)
        crop_pct = self.data_config.get("crop_pct") or _TIMM_DEFAULT_CROP_PCT
        # The short side after the resize (the larger one for a non-square input: an upper
        # bound for every crop mode, which is what the limit needs).
        self.resize_side = math.floor(max(height, width) / crop_pct)
        self._draft_side = self.resize_side

    def check(self, data: bytes) -> ImageInfo:
        """Header-only validation under this preprocessor's limits and resize (``check_image``).

            pre.check(body)       # raises ImageError, e.g. AspectRatioTooLarge for 1x10000
        """
        return check_image(data, self.limits, self.resize_side)

    def decode(self, data: bytes) -> Image.Image:
        """The upright RGB picture; raises a typed ImageError for anything else."""
        image = _open(data, self.limits, self.resize_side)
        try:
            if image.format in ("JPEG", "MPO"):
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers the resize target.
                image.draft("RGB", (self._draft_side, self._draft_side))
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
        except Image.DecompressionBombError:
            raise TooManyPixels(
                f"the image decodes to more than {self.limits.max_pixels:,} pixels; downscale it"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as exc:
            raise CorruptImage(
                f"the {image.format} data cannot be decoded ({exc}); the file is truncated or "
                "damaged: re-export it and send the whole file"
            ) from None

    def transform(self, image: Image.Image) -> torch.Tensor:
        """A decoded RGB picture (``decode``'s, or an augmented copy of it) to the model's
        normalized tensor: the serving transform, which retraining shares."""
        tensor: torch.Tensor = self._transform(image)
        return tensor

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.transform(self.decode(data))

