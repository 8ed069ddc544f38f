"""Long thin images are refused from the header, before any pixel is decoded.

Issue 13 item 3: a 3 KB 1x10000 JPEG passed the pixel count, then the resize to the model's
input (short side to 256 px) made it 256 x 2,560,000 pixels: 11.5 s of CPU and +2.6 GB for
one request. The aspect ratio and the size after the resize are now limits of their own, and
real photos, panoramas and screenshots still pass.
"""

from __future__ import annotations

import pytest
from inference_images import measure, ramp

from inference import Classifier, ImageLimits, LoadedModel, Preprocessor, check_image
from inference.errors import AspectRatioTooLarge, ResizedTooLarge
from inference.preprocess import resized_size

# Each format up to its own largest side: JPEG stops at 65,500, WebP at 16,383.
THIN = [
    pytest.param(1, 10_000, "JPEG", id="1x10000-jpeg"),
    pytest.param(10_000, 1, "JPEG", id="10000x1-jpeg"),
    pytest.param(1, 65_500, "JPEG", id="1x65500-jpeg"),
    pytest.param(1, 10_000, "PNG", id="1x10000-png"),
    pytest.param(1, 65_535, "PNG", id="1x65535-png"),
    pytest.param(65_535, 1, "PNG", id="65535x1-png"),
    pytest.param(16_383, 1, "WEBP", id="16383x1-webp"),
    pytest.param(30, 400, "PNG", id="30x400-png"),  # small, but 13.3:1
]


@pytest.mark.parametrize(("width", "height", "fmt"), THIN)
def test_long_thin_images_are_refused_in_milliseconds_with_no_memory(
    lite0: LoadedModel, width: int, height: int, fmt: str,
) -> None:
    pre = Preprocessor(lite0.data_config)
    body = ramp(width, height, fmt)
    # The check before payment, and the decode path itself (classify-local, the batcher).
    for attempt in (pre.check, pre):
        with measure() as used, pytest.raises(AspectRatioTooLarge) as refused:
            attempt(body)
        assert refused.value.status == 422
        assert refused.value.code == "aspect_ratio_too_large"
        assert f"the image is {width}x{height}: aspect ratio " in str(refused.value)
        assert "exceeds the 10:1 limit; crop or pad it" in str(refused.value)
        # Before the fix, 1x10000 took 10.7 s of CPU and 2.6 GB here; now about 0.2 ms.
        assert used.wall_s < 0.5 and used.cpu_s < 0.5, (attempt, used)
        assert used.rss_growth_mb < 50, (attempt, used)


def test_the_message_names_the_shape_the_limit_and_the_fix() -> None:
    with pytest.raises(AspectRatioTooLarge) as refused:
        check_image(ramp(1, 10_000, "JPEG"))
    assert str(refused.value) == ("the image is 1x10000: aspect ratio 10,000:1 exceeds the 10:1 "
                                  "limit; crop or pad it to at most 10:1")
    # Just past the limit the ratio is rounded up, so it never reads as the limit itself.
    with pytest.raises(AspectRatioTooLarge, match=r"aspect ratio 10\.01:1 exceeds the 10:1"):
        check_image(ramp(2001, 200, "PNG"))


@pytest.mark.parametrize(
    ("width", "height", "fmt"),
    [
        pytest.param(4000, 3000, "JPEG", id="photo-4:3"),
        pytest.param(1080, 2340, "PNG", id="phone-screenshot"),
        pytest.param(6000, 1000, "JPEG", id="panorama-6:1"),
        pytest.param(8000, 1000, "JPEG", id="panorama-8:1"),
        pytest.param(50, 500, "PNG", id="exactly-10:1"),
        pytest.param(1, 1, "PNG", id="one-pixel"),
    ],
)
def test_photos_panoramas_and_screenshots_are_still_classified(
    lite0: LoadedModel, width: int, height: int, fmt: str,
) -> None:
    pre = Preprocessor(lite0.data_config)
    body = ramp(width, height, fmt)
    info = pre.check(body)
    assert (info.width, info.height) == (width, height)
    with measure() as used:
        tensor = pre(body)
    assert tuple(tensor.shape) == (3, 224, 224)
    assert used.rss_growth_mb < 50, used


def test_a_real_photo_is_accepted(lite0: LoadedModel, cat_jpeg: bytes) -> None:
    pre = Preprocessor(lite0.data_config)
    assert pre.check(cat_jpeg).format == "JPEG"
    assert tuple(pre(cat_jpeg).shape) == (3, 224, 224)


def test_the_size_after_the_resize_has_its_own_limit(lite0: LoadedModel) -> None:
    # A model with an 800 px input (crop 1.0) resizes the short side to 800: a 9:1 image is
    # within the ratio but becomes 800 x 7,200 = 5.76 MP before the crop.
    big = Preprocessor(dict(lite0.data_config, input_size=(3, 800, 800), crop_pct=1.0))
    assert big.resize_side == 800
    body = ramp(100, 900, "PNG")
    for attempt in (big.check, big):
        with measure() as used, pytest.raises(ResizedTooLarge) as refused:
            attempt(body)
        assert refused.value.status == 422 and refused.value.code == "resized_too_large"
        assert used.wall_s < 0.5 and used.rss_growth_mb < 50, used
    assert str(refused.value) == (
        "the image is 100x900: resized for the model (short side 800 px) it becomes 800x7200 = "
        "5,760,000 pixels, above the limit of 4,000,000; crop or pad it closer to square")
    # lite0 (short side 256) makes 256 x 2,304 of the same image: accepted.
    assert Preprocessor(lite0.data_config).check(body).height == 900
    assert check_image(body).height == 900  # no model known: the ratio alone
    tight = ImageLimits(max_resized_pixels=500_000)
    with pytest.raises(ResizedTooLarge):
        Preprocessor(lite0.data_config, tight).check(body)


def test_the_classifier_check_is_the_one_the_gateway_runs(lite0: LoadedModel) -> None:
    """``Classifier.check`` (what the gateway calls before any payment) applies the model's
    resize; the null classifier, with no model, applies the ratio."""
    clf = Classifier.from_model(lite0, limits=ImageLimits(max_resized_pixels=500_000))
    with pytest.raises(AspectRatioTooLarge):
        clf.check(ramp(1, 10_000, "JPEG"))
    with pytest.raises(ResizedTooLarge):
        clf.check(ramp(100, 900, "PNG"))  # 256 x 2,304 = 589,824 after the resize
    null = Classifier.null()
    with pytest.raises(AspectRatioTooLarge):
        null.check(ramp(1, 10_000, "JPEG"))
    assert null.check(ramp(100, 900, "PNG")).width == 100


def test_limits_and_resized_size() -> None:
    assert resized_size(1, 10_000, 256) == (256, 2_560_000)
    assert resized_size(10_000, 1, 256) == (2_560_000, 256)
    assert resized_size(4000, 3000, 256) == (341, 256)
    assert ImageLimits().max_aspect_ratio == 10.0
    with pytest.raises(ValueError, match="max_aspect_ratio"):
        ImageLimits(max_aspect_ratio=0.5)
