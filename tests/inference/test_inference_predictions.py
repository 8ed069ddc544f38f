"""The real model's answers: a cat is a cat, a dog a dog, batched equals alone, bad input never crashes."""

from __future__ import annotations

import asyncio

import pytest
import torch
from inference_images import encode, grey16, png_header_only
from PIL import Image

from inference import AnimalGroup, Classifier, ImageError, Prediction


async def test_chelsea_is_a_cat(classifier: Classifier, cat_png: bytes) -> None:
    [preds] = await classifier.classify([cat_png], top_k=3)
    assert len(preds) == 3
    assert preds[0].group is AnimalGroup.CAT
    assert preds[0].label == "tiger cat" and preds[0].index == 282
    assert preds[0].probability == pytest.approx(0.39, abs=0.02)
    assert [p.probability for p in preds] == sorted((p.probability for p in preds), reverse=True)


async def test_a_dog_photo_is_a_dog(classifier: Classifier, dog_jpeg: bytes) -> None:
    [preds] = await classifier.classify([dog_jpeg], top_k=5)
    assert preds[0].group is AnimalGroup.DOG
    assert preds[0].label == "dalmatian"
    assert preds[0].to_json() == {"label": "dalmatian", "index": 251,
                                  "probability": preds[0].probability, "group": "dog"}


async def test_a_prediction_inside_a_batch_equals_the_one_made_alone(
    classifier: Classifier, cat_png: bytes, dog_jpeg: bytes, cat_jpeg: bytes
) -> None:
    sizes: list[int] = []
    classifier.add_batch_listener(lambda event: sizes.append(event.size))
    images = [cat_png, dog_jpeg, cat_jpeg, dog_jpeg, cat_png]
    alone = [(await classifier.classify([img], top_k=5))[0] for img in images]
    together = await classifier.classify(images, top_k=5)
    await asyncio.sleep(0.05)  # listeners run on the loop after each batch
    assert sizes[: len(images)] == [1] * len(images)
    assert max(sizes[len(images):]) > 1, "the five images should have shared a batch"
    for one, many in zip(alone, together):
        assert [p.index for p in one] == [p.index for p in many]
        for a, b in zip(one, many):
            assert a.probability == pytest.approx(b.probability, abs=1e-4)
    classifier._listeners.clear()


async def test_preprocessed_tensors_give_the_same_answer(classifier: Classifier,
                                                         cat_png: bytes) -> None:
    tensor = classifier.preprocessor(cat_png)
    [from_tensor] = await classifier.classify_tensors(tensor[None], top_k=2)
    [from_bytes] = await classifier.classify([cat_png], top_k=2)
    assert [p.index for p in from_tensor] == [p.index for p in from_bytes]
    with pytest.raises(ValueError, match="shape"):
        await classifier.classify_tensors(torch.zeros(1, 3, 100, 100))


def _bad_inputs(chelsea: Image.Image, cat_jpeg: bytes) -> dict[str, tuple[bytes, int | None]]:
    """name -> (body, expected HTTP status, or None when a cat prediction is expected)."""
    frames = [chelsea.resize((90, 60)), chelsea.resize((90, 60)).rotate(180)]
    return {
        "empty body": (b"", 400),
        "truncated JPEG": (cat_jpeg[: len(cat_jpeg) // 2], 422),
        "text file": (b"a plain text file, not an image\n" * 4, 415),
        "PNG header claiming 50000x50000": (png_header_only(50_000, 50_000), 413),
        "animated GIF": (encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), 415),
        "CMYK JPEG": (encode(chelsea.convert("CMYK"), "JPEG", quality=90), None),
        "16-bit PNG": (encode(grey16(chelsea), "PNG"), None),
        "greyscale JPEG": (encode(chelsea.convert("L"), "JPEG", quality=90), None),
        "palette PNG": (encode(chelsea.convert("P"), "PNG"), None),
        "RGBA PNG": (encode(chelsea.convert("RGBA"), "PNG"), None),
        "WebP": (encode(chelsea, "WEBP", quality=90), None),
        "multi-picture JPEG (MPO, as phones write)": (
            encode(chelsea, "MPO", save_all=True, append_images=[frames[0]]), None),
    }


async def test_each_bad_input_gets_its_typed_error_or_a_correct_prediction(
    classifier: Classifier, chelsea: Image.Image, cat_jpeg: bytes
) -> None:
    for name, (body, status) in _bad_inputs(chelsea, cat_jpeg).items():
        try:
            [preds] = await asyncio.wait_for(classifier.classify([body], top_k=3), timeout=60)
        except ImageError as exc:
            assert exc.status == status, f"{name}: {exc.status} {exc}"
            assert "; " in str(exc), f"{name}: the message should name the fix: {exc}"
            continue
        assert status is None, f"{name}: expected HTTP {status}, got a prediction"
        assert preds[0].group is AnimalGroup.CAT, f"{name}: {preds[0]}"


async def test_one_bad_image_in_a_request_is_named_and_the_batcher_keeps_serving(
    classifier: Classifier, cat_png: bytes
) -> None:
    with pytest.raises(ImageError) as info:
        await classifier.classify([cat_png, b"not an image at all"], top_k=1)
    assert info.value.index == 1 and str(info.value).startswith("image 1:")
    assert info.value.status == 415
    again = info.value.at(3)
    assert type(again) is type(info.value) and again.index == 3
    assert str(again).startswith("image 3: ") and "image 1" not in str(again)
    [preds] = await classifier.classify([cat_png], top_k=1)
    assert isinstance(preds[0], Prediction)
    assert classifier.stats().admitted == 0
