"""Preprocessing limits and formats: each bad input gets its typed error, before full decode."""

from __future__ import annotations

import io

import pytest
from inference_images import encode, grey16, png_header_only
from PIL import Image

from inference import (
    CorruptImage,
    EmptyImage,
    ImageLimits,
    ImageTooLarge,
    LoadedModel,
    Preprocessor,
    TooManyPixels,
    UnsupportedFormat,
    check_image,
)


def test_the_limits_are_checked_from_the_header_alone() -> None:
    # 2.5 gigapixels announced in 100 bytes: refused without allocating anything.
    bomb = png_header_only(50_000, 50_000)
    assert len(bomb) < 120
    with pytest.raises(TooManyPixels) as info:
        check_image(bomb)
    assert info.value.status == 413
    assert "downscale" in str(info.value) or "at most" in str(info.value)

    # Below Pillow's own guard but above ours (40 MP by default).
    with pytest.raises(TooManyPixels, match="40,000,000"):
        check_image(png_header_only(8000, 6000))
    assert check_image(png_header_only(8000, 6000), ImageLimits(max_pixels=50_000_000)).width == 8000


def test_byte_limit_and_empty_body(cat_jpeg: bytes) -> None:
    with pytest.raises(EmptyImage) as empty:
        check_image(b"")
    assert empty.value.status == 400
    with pytest.raises(ImageTooLarge) as large:
        check_image(cat_jpeg, ImageLimits(max_bytes=1000))
    assert large.value.status == 413
    assert f"{len(cat_jpeg):,} bytes" in str(large.value)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"hello, this is a text file\n", "text"),
        (b"GIF89a" + b"\x00" * 40, "GIF"),
        (b"II*\x00" + b"\x00" * 40, "TIFF"),
        (b"\x00\x01\x02\xff" * 10, "not an image"),
    ],
)
def test_unsupported_formats_are_415_and_say_what_was_sent(body: bytes, named: str) -> None:
    with pytest.raises(UnsupportedFormat) as info:
        check_image(body)
    assert info.value.status == 415
    assert named in str(info.value) and "JPEG, PNG or WebP" in str(info.value)


def test_animated_images_are_415(chelsea: Image.Image) -> None:
    frames = [chelsea.resize((64, 48)), chelsea.resize((64, 48)).rotate(90)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(UnsupportedFormat, match="GIF"):
        check_image(gif)
    webp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(UnsupportedFormat, match="animated"):
        check_image(webp)
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(UnsupportedFormat, match="animated"):
        check_image(apng)


def test_damaged_files_of_a_supported_format_are_422(lite0: LoadedModel, cat_jpeg: bytes,
                                                     cat_png: bytes) -> None:
    pre = Preprocessor(lite0.data_config)
    cases = {
        "truncated JPEG": cat_jpeg[: len(cat_jpeg) // 2],
        "JPEG header only": cat_jpeg[:200],
        "JPEG magic then noise": b"\xff\xd8\xff" + bytes(range(256)) * 4,
        "truncated PNG": cat_png[: len(cat_png) // 2],
        "PNG signature only": cat_png[:8],
        "PNG with a zero-filled body": cat_png[:33] + b"\x00" * 500,
    }
    for name, body in cases.items():
        with pytest.raises(CorruptImage) as info:
            pre(body)
        assert info.value.status == 422, name
        assert "re-export" in str(info.value), name


def test_jpeg_draft_mode_decodes_a_large_photo_near_the_target_size(
    lite0: LoadedModel, chelsea: Image.Image
) -> None:
    pre = Preprocessor(lite0.data_config)
    big = encode(chelsea.resize((4510, 3000)), "JPEG", quality=85)
    decoded = pre.decode(big)
    # 1/8 DCT scale: 564x375, still covering the 256-pixel resize target.
    assert decoded.size == (564, 375)
    assert pre(big).shape == (3, 224, 224)


def test_exif_orientation_is_honoured(lite0: LoadedModel, chelsea: Image.Image) -> None:
    pre = Preprocessor(lite0.data_config)
    # Store the photo rotated, with EXIF saying "rotate 90 CW to display" (orientation 6).
    stored = chelsea.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    body = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    upright = pre.decode(body)
    assert upright.size == chelsea.size
    plain = pre.decode(encode(chelsea, "JPEG", quality=95))
    diff = sum(abs(a - b) for a, b in zip(upright.resize((32, 32)).tobytes(),
                                          plain.resize((32, 32)).tobytes()))
    assert diff / (32 * 32 * 3) < 4  # same picture, not a rotated one


def test_modes_become_rgb_preserving_the_picture(lite0: LoadedModel, chelsea: Image.Image) -> None:

    pre = Preprocessor(lite0.data_config)
    sixteen = encode(grey16(chelsea), "PNG")
    assert Image.open(io.BytesIO(sixteen)).mode == "I;16"
    grey = pre.decode(sixteen)
    assert grey.mode == "RGB"
    # Scaled, not clipped: the 16-bit image decodes to the 8-bit greyscale one.
    expected = chelsea.convert("L").convert("RGB")
    assert grey.tobytes() == expected.tobytes()

    transparent = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    assert pre.decode(encode(transparent, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    cmyk = pre.decode(encode(chelsea.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and cmyk.size == chelsea.size
