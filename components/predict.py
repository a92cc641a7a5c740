"""Batch prediction with a pushed (or any exported) model on raw image files.

Inputs: files, folders (searched recursively; a file without an image extension
gets a row saying so) and CSV/JSONL manifests with a `path` column. Each file is
checked as ingest checks it (odd formats converted to PNG); a bad file gets a row
with its error instead of stopping the job. Images go through the model's
`serving_images` signature in batches, in this process with a progress line, or, for
large inputs, as a Beam job (a DoFn that loads the model once per worker) with the
pipeline's runner options.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from typing import Any, Iterable, Iterator

from components import artifacts, features, fileio, imaging, sources
from components.config import IMAGE_EXTENSIONS, MAX_PIXELS
from components.errors import ConfigError, DataError

COLUMNS = ("path", "class", "probability", "top_k", "error", "model")
_SUFFIXES = tuple(f".{extension}" for extension in IMAGE_EXTENSIONS)


def list_inputs(inputs: Iterable[str]) -> list[tuple[str, str | None]]:
    """Every file the inputs name, in order, with why it is not read (None: it is).
    Folders are searched recursively, hidden entries left out; a file in a folder
    without an image extension is listed with the reason, as ingest quarantines it,
    never skipped in silence. A file named, or listed in a manifest, is always read.
    Nothing to read at all (empty folders) is a DataError."""
    inputs = list(inputs)
    listed: list[tuple[str, str | None]] = []
    for item in inputs:
        if os.path.isdir(item):
            for root, folders, names in os.walk(item):
                folders[:] = sorted(f for f in folders if not f.startswith("."))
                listed.extend((os.path.join(root, n), _unsupported(n)) for n in sorted(names)
                              if not n.startswith("."))
        elif item.lower().endswith((".csv", ".jsonl")):
            listed.extend((path, None) for path in _manifest_paths(item))
        elif fileio.exists(item):
            listed.append((item, None))
        else:
            raise DataError(f"input {item} does not exist; pass image files, folders or a "
                            ".csv/.jsonl manifest with a 'path' column.")
    if not any(why is None for _, why in listed):
        found = (f"only {len(listed)} file(s) without an image extension (e.g. "
                 f"{listed[0][0]})" if listed else "it holds no files")
        raise DataError(f"no images to predict in {' '.join(inputs)}: {found}; pass image "
                        f"files ({', '.join(_SUFFIXES)}), folders holding them, or a "
                        ".csv/.jsonl manifest.")
    return listed


def _unsupported(name: str) -> str | None:
    if name.lower().endswith(_SUFFIXES):
        return None
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return (f"file extension {extension or '(none)'!r} is not an image extension "
            f"({', '.join(IMAGE_EXTENSIONS)}); convert it, or name the file itself to try it")


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files, folders (recursive, image extensions) and manifests -> the file paths to
    read (`list_inputs` also lists the files left out, and why)."""
    return [path for path, why in list_inputs(inputs) if why is None]


def with_unread(listed: list[tuple[str, str | None]],
                rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows for the files read, with an error row for each file listed but not
    read, in `list_inputs`' order."""
    answered = iter(rows)
    return [next(answered) if why is None else {"path": path, "error": why}
            for path, why in listed]


def looks_like_rows(head: str) -> bool:
    """Whether a file starting with `head` is an earlier output of `write_rows`."""
    first = head.split("\n", 1)[0]
    if first.startswith("{"):
        try:
            return set(COLUMNS) <= set(json.loads(first))
        except ValueError:
            return False
    return first.rstrip("\r") == ",".join(COLUMNS)


def _manifest_paths(path: str) -> list[str]:
    out = []
    for number, _, full in sources.read_manifest(path):
        if not full:
            raise DataError(f"{path}: row {number} has no 'path' column.")
        out.append(full)
    return out


def shape_warning(paths: list[str], image_shape: list[int] | None,
                  sample: int = 50) -> str | None:
    """A warning when the inputs look nothing like what the model was trained on (a
    640x480 photo sent to an 8x8 grayscale model is resized and answered confidently):
    from the headers of up to `sample` files."""
    if not image_shape or not paths:
        return None
    from PIL import Image

    height, width, channels = image_shape
    odd, seen = [], 0
    for path in paths[:sample]:
        try:
            with Image.open(path) as image:
                w, h = image.size
                color = image.mode not in ("L", "LA", "1", "I", "I;16", "F")
        except Exception:
            continue                       # unreadable: its row says so
        seen += 1
        scale = max(h / height, height / h, w / width, width / w)
        if scale > 4 or color != (channels == 3):
            odd.append((w, h, "RGB" if color else "grayscale"))
    if not odd:
        return None
    w, h, mode = odd[0]
    return (f"{len(odd)} of {seen} images checked (e.g. {w}x{h} {mode}) differ from the "
            f"model's {width}x{height} {'RGB' if channels == 3 else 'grayscale'} input by more "
            "than 4x in size or in color: they are resized and converted, and the answers may "
            "mean little.")


def load_model(saved_model: str):
    """The SavedModel and its class names (the label vocabulary asset, in id order)."""
    import tensorflow as tf

    if not fileio.exists(fileio.join(saved_model, artifacts.SAVED_MODEL_PB)):
        raise ConfigError(f"{saved_model} is not a SavedModel directory (no saved_model.pb).")
    loaded = tf.saved_model.load(fileio.tf_path(saved_model))
    if "serving_images" not in loaded.signatures:
        raise ConfigError(f"{saved_model} has no serving_images signature; export it with "
                          "imgpipe's trainer.")
    vocab = fileio.join(saved_model, "assets", features.LABEL_VOCABULARY)
    loaded.vocabulary = fileio.read_text(vocab).splitlines() if fileio.exists(vocab) else None
    return loaded


def predict_files(model, paths: list[str], top_k: int = 3,
                  max_pixels: int = MAX_PIXELS) -> list[dict[str, Any]]:
    """One row per path, in order: class, probability, top-k, or an error."""
    import numpy as np
    import tensorflow as tf

    rows: list[dict[str, Any]] = [{"path": p} for p in paths]
    good, images = [], []
    for i, path in enumerate(paths):
        try:
            images.append(imaging.check_image(fileio.read_bytes(path), max_pixels).data)
            good.append(i)
        except (imaging.BadImage, OSError) as exc:
            rows[i]["error"] = str(exc)
    if images:
        fn = model.signatures["serving_images"]
        out = fn(images=tf.constant(images))
        probs = out["probabilities"].numpy()
        classes = out["class_name"].numpy()
        names = getattr(model, "vocabulary", None)
        for j, i in enumerate(good):
            order = np.argsort(-probs[j])[:top_k]
            rows[i].update({"class": classes[j].decode(), "probability": float(probs[j].max()),
                            "top_k": [[names[k] if names else int(k), float(probs[j][k])]
                                      for k in order]})
    return rows


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_local(saved_model: str, paths: list[str], batch_size: int = 64, top_k: int = 3,
                  progress: bool = True) -> list[dict[str, Any]]:
    model = load_model(saved_model)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for chunk in _chunks(paths, batch_size):
        rows.extend(predict_files(model, chunk, top_k))
        if progress:
            rate = len(rows) / max(time.perf_counter() - started, 1e-9)
            bar = "#" * int(30 * len(rows) / len(paths))
            print(f"\r[{bar:<30}] {len(rows)}/{len(paths)} images, {rate:.0f}/s",
                  end="", file=sys.stderr, flush=True)
    if progress and paths:
        print(file=sys.stderr)
    return rows


def predict_beam(saved_model: str, paths: list[str], pipeline_args: list[str],
                 batch_size: int = 64, top_k: int = 3) -> list[dict[str, Any]]:
    """The same prediction as a Beam job: batches of paths, a model per DoFn instance."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    class Predict(beam.DoFn):
        def setup(self):
            self.model = load_model(saved_model)

        def process(self, batch):
            indexed = sorted(batch)
            rows = predict_files(self.model, [p for _, p in indexed], top_k)
            for (index, _), row in zip(indexed, rows):
                yield index, row

    import tempfile

    with tempfile.TemporaryDirectory(prefix="imgpipe-predict-") as tmp:
        with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
            _ = (pipeline
                 | beam.Create(list(enumerate(paths)))
                 | beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
                 | beam.ParDo(Predict())
                 | beam.Map(lambda pair: json.dumps([pair[0], pair[1]]))
                 | beam.io.WriteToText(os.path.join(tmp, "rows"), file_name_suffix=".jsonl"))
        results = []
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), encoding="utf-8") as handle:
                results.extend(json.loads(line) for line in handle if line.strip())
    return [row for _, row in sorted(results, key=lambda pair: pair[0])]


def write_rows(rows: list[dict[str, Any]], output: str | None, model: str = "") -> str:
    """CSV (top_k as JSON) or JSONL by the output's extension; stdout as CSV. A file is
    written under a temporary name and renamed into place: a failure leaves the
    earlier file as it was. File names that are not UTF-8 (legal on Linux) keep their
    bytes in CSV and are escaped in JSONL. `model`: which model answered (NAME:VERSION
    or its directory), in every row."""
    rows = [dict(row, model=model) for row in rows]
    if output and output.lower().endswith(".jsonl"):
        text = "".join(json.dumps({k: row.get(k) for k in COLUMNS}) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row.get("path"), row.get("class", ""),
                             "" if row.get("probability") is None else f"{row['probability']:.6f}",
                             json.dumps(row["top_k"]) if row.get("top_k") else "",
                             row.get("error", ""), row["model"]])
        text = buffer.getvalue()
    data = text.encode("utf-8", "surrogateescape")
    if output:
        fileio.write_bytes_atomic(output, data)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return text
