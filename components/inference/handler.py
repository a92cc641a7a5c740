"""Apache Beam's RunInference over an exported model's `serving_images` signature: the
model handler and the per-element functions of the Beam job that `imgpipe predict` and
the infer step share (`components.inference.predict.run_inference` builds it; the model
is loaded and called through `components.inference.client`).

`ServingImagesHandler` is a `ModelHandler` of its own rather than one of Beam's
TensorFlow handlers (`apache_beam.ml.inference.tensorflow_inference`): that module
imports tensorflow_hub, which this project does not install, and its handlers load a
model with Keras' `load_model`, which in Keras 3 reads `.keras` files only, not the
SavedModel whose signature serves here. Its batches are fixed at `batch_size` images
(the last one of a bundle smaller), wrapped in Beam's `KeyedModelHandler` so that each
answer keeps its (index, path) key.

Imported only when a job is built: it imports Beam and TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from components.config.data import MAX_PIXELS
from components.data import imaging
from components.inference import client
from components.io import fileio

# The tagged output of the files that cannot be read or are no image.
REJECTED = "rejected"
_MEMORY_NOTICE = "Resource module is not available"


class _NoMemoryNotice(logging.Filter):
    """Drops the warning Beam 2.77 logs twice per model load, that it cannot measure
    memory: its `resource` import sits beside one of its model manager, which needs
    torch, so without torch it takes `resource` for absent. Nothing else is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_MEMORY_NOTICE)


if not any(isinstance(f, _NoMemoryNotice) for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_NoMemoryNotice())


class ServingImagesHandler(ModelHandler[bytes, PredictionResult, Any]):
    """Encoded images -> {class, probability, top_k} through the SavedModel's
    serving_images signature (input `images`: a batch of encoded images; outputs
    `probabilities`, `class_id`, `class_name`), loaded once per worker with its label
    vocabulary (`client.load`). A batch that TensorFlow refuses as a whole (an
    image Pillow read but the signature's decoder rejects) is scored image by image,
    so only that image gets an error, and the job goes on."""

    def __init__(self, saved_model: str, batch_size: int = 64, top_k: int = 3):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._saved_model = saved_model
        self._top_k = top_k

    def load_model(self) -> client.ServingModel:
        return client.load(self._saved_model)

    def run_inference(self, batch: Sequence[bytes], model: Any,
                      inference_args: dict[str, Any] | None = None
                      ) -> list[PredictionResult]:
        import tensorflow as tf

        images = list(batch)
        try:
            rows = client.answers(model, images, self._top_k)
        except tf.errors.InvalidArgumentError:
            rows = [self._alone(model, image) for image in images]
        return [PredictionResult(image, row, self._saved_model)
                for image, row in zip(images, rows)]

    def _alone(self, model: Any, image: bytes) -> dict[str, Any]:
        import tensorflow as tf

        try:
            return client.answers(model, [image], self._top_k)[0]
        except tf.errors.InvalidArgumentError as exc:
            return {"error": f"the model cannot decode this image ({exc.message.strip()})"}

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(image) for image in batch)

    def get_metrics_namespace(self) -> str:
        return "imgpipe_serving_images"


def read_checked(path: str, max_pixels: int = MAX_PIXELS) -> tuple[bytes | None, str | None]:
    """The file's bytes as ingest checks them (odd formats converted to PNG), or None
    and why it cannot be read."""
    try:
        return imaging.check_image(fileio.read_bytes(path), max_pixels).data, None
    except (imaging.BadImage, OSError) as exc:
        return None, str(exc)


def read_or_reject(item: tuple[int, str], max_pixels: int) -> Iterator[Any]:
    """(index, path) -> ((index, path), checked bytes) for RunInference, or, tagged
    REJECTED, (index, row with the error) for a file that cannot be read or checked."""
    index, path = item
    data, why = read_checked(path, max_pixels)
    if why is not None:
        yield beam.pvalue.TaggedOutput(REJECTED, (index, {"path": path, "error": why}))
    else:
        yield (index, path), data


def keyed_row(keyed: tuple[tuple[int, str], PredictionResult]) -> tuple[int, dict[str, Any]]:
    """RunInference's ((index, path), PredictionResult) -> (index, row)."""
    (index, path), result = keyed
    return index, {"path": path, **result.inference}
