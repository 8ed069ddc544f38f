"""The image classifier: preprocessing, the timm model, the dynamic batcher.

    from inference import Classifier, ImageClassifier

    classifier: ImageClassifier = Classifier.load()     # tf_efficientnet_lite0, bundled weights
    await classifier.start()                            # warms every batch-size bucket
    [answer] = await classifier.classify([jpeg_bytes], top_k=3)
    print(answer.animal.group, answer.animal.probability, answer.animal.status)  # cat 0.92 animal
    print(answer[0].label, answer[0].probability, answer[0].group, classifier.version.id)
    await classifier.close()

``retrain(store, samples_dir)`` (inference.retraining) trains a candidate on the stored samples,
gates it against the golden set (inference.gate, inference.golden_set) and promotes it.

``ModelStore`` (inference.versions) keeps model versions in a directory: id = sha256 of the
weights file, aliases ``champion``/``previous``; ``store.load("champion")`` is a LoadedModel.

``Classifier`` batches for a timm model; ``NullClassifier`` (``Classifier.null()``) answers
one fixed prediction with no model. A server holds either as an ``ImageClassifier``.

Errors carry the HTTP status to answer: ``ImageError`` (400/413/415/422) for the caller's
image, ``ClassifierError`` (``Overloaded`` 429, ``DeadlineExceeded``/``ClassifierClosed``
503, with ``retry_after``) for the service.
"""

from inference._malloc import keep_freed_memory
from inference.animal import (
    NOT_ANIMAL_FROM,
    UNSURE_BELOW,
    AnimalAnswer,
    AnimalStatus,
    animal_answer,
)
from inference.classifier import Classifier
from inference.errors import (
    AspectRatioTooLarge,
    ClassifierClosed,
    ClassifierError,
    CorruptImage,
    DeadlineExceeded,
    EmptyImage,
    ImageError,
    ImageTooLarge,
    InferenceError,
    Overloaded,
    ResizedTooLarge,
    TooManyPixels,
    UnsupportedFormat,
)
from inference.interface import BatcherStats, BatchEvent, ImageClassifier
from inference.labels import (
    ANIMAL_GROUP_RANGES,
    AnimalGroup,
    group_of,
    groups_for,
    imagenet_labels,
)
from inference.model import DEFAULT_MODEL, LoadedModel, ModelVersion, load_model
from inference.null_classifier import NullClassifier
from inference.prediction import ImageAnswer, Prediction
from inference.preprocess import (
    DEFAULT_LIMITS,
    ImageInfo,
    ImageLimits,
    Preprocessor,
    check_image,
)
from inference.resident import ResidentModels
from inference.retraining import RetrainOptions, RetrainOutcome, retrain
from inference.training import RetrainError, TrainOptions
from inference.versions import ModelStore, StoredVersion, StoreError
from inference.weights import content_hash, file_digest

__all__ = [
    "ANIMAL_GROUP_RANGES",
    "DEFAULT_LIMITS",
    "DEFAULT_MODEL",
    "NOT_ANIMAL_FROM",
    "UNSURE_BELOW",
    "AnimalAnswer",
    "AnimalGroup",
    "AnimalStatus",
    "AspectRatioTooLarge",
    "BatchEvent",
    "BatcherStats",
    "Classifier",
    "ClassifierClosed",
    "ClassifierError",
    "CorruptImage",
    "DeadlineExceeded",
    "EmptyImage",
    "ImageAnswer",
    "ImageClassifier",
    "ImageError",
    "ImageInfo",
    "ImageLimits",
    "ImageTooLarge",
    "InferenceError",
    "LoadedModel",
    "ModelStore",
    "ModelVersion",
    "NullClassifier",
    "Overloaded",
    "Prediction",
    "Preprocessor",
    "ResidentModels",
    "ResizedTooLarge",
    "RetrainError",
    "RetrainOptions",
    "RetrainOutcome",
    "StoreError",
    "StoredVersion",
    "TooManyPixels",
    "TrainOptions",
    "UnsupportedFormat",
    "animal_answer",
    "check_image",
    "content_hash",
    "file_digest",
    "group_of",
    "groups_for",
    "imagenet_labels",
    "keep_freed_memory",
    "load_model",
    "retrain",
]
