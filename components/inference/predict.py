"""Batch prediction with a pushed (or any exported) model on raw image files, for
`imgpipe predict` and the infer step alike (`run_inference`).

Inputs: files, folders (searched recursively; a file without an image extension
gets a row saying so) and CSV/JSONL manifests with a `path` column. Each file is
checked as ingest checks it (odd formats converted to PNG); a bad file gets a row
with its error instead of stopping the job. The good ones go through the model's
`serving_images` signature with Apache Beam's RunInference (`components/inference/handler.py`
holds the model handler, over the serving-signature client
`components/inference/client.py`): in this process by default, or with the pipeline's
Beam runner options for large inputs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from typing import Any, Iterable

from components.config.beam import BeamConfig
from components.config.data import IMAGE_EXTENSIONS, MAX_PIXELS
from components.data import sources
from components.errors import DataError
from components.inference import client
from components.io import fileio

COLUMNS = ("path", "class", "probability", "top_k", "error", "model")
_SUFFIXES = tuple(f".{extension}" for extension in IMAGE_EXTENSIONS)


def list_inputs(inputs: Iterable[str]) -> list[tuple[str, str | None]]:
    """Every file the inputs name, in order, with why it is not read (None: it is).
    Folders are searched recursively, hidden entries left out; a file in a folder
    without an image extension is listed with the reason, as ingest quarantines it,
    never skipped in silence. A file named, or listed in a manifest, is always read,
    unless it is no regular file (a FIFO, a socket, a device, a link to one): that is
    listed with the reason and never opened (a FIFO would block until a writer comes).
    Nothing to read at all (empty folders) is a DataError."""
    inputs = list(inputs)
    listed: list[tuple[str, str | None]] = []
    for item in inputs:
        if os.path.isdir(item):
            for root, folders, names in os.walk(item):
                folders[:] = sorted(f for f in folders if not f.startswith("."))
                listed.extend((os.path.join(root, n), _not_regular(os.path.join(root, n))
                               or _unsupported(n)) for n in sorted(names)
                              if not n.startswith("."))
        elif fileio.is_remote(item) and fileio.isdir(item):     # a folder in a bucket
            for path in fileio.walk_files(item):
                parts = path[len(item.rstrip("/")):].strip("/").split("/")
                if not any(part.startswith(".") for part in parts):
                    listed.append((path, _unsupported(parts[-1])))
        elif item.lower().endswith((".csv", ".jsonl")):
            listed.extend((path, _not_regular(path)) for path in _manifest_paths(item))
        elif fileio.exists(item):
            listed.append((item, _not_regular(item)))
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


def _not_regular(path: str) -> str | None:
    """Why a local path that is no regular file is not read (a stat, never an open)."""
    kind = fileio.special(path)
    return fileio.NotRegularFile(path, kind).strerror if kind else None


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


def fingerprint(listed: list[tuple[str, str | None]]) -> str:
    """A content hash of what `list_inputs` listed: each path, why it is not read, and
    the bytes of each file read (objects in a bucket: generation and size from one
    listing, `fileio.identities`, instead of their bytes)."""
    import hashlib

    digest = hashlib.sha256()
    remote = fileio.identities([p for p, why in listed if why is None and fileio.is_remote(p)])
    for path, why in listed:
        digest.update(f"{path}\0{why or ''}\0".encode("utf-8", "surrogateescape"))
        if why is not None:
            continue
        if path in remote:
            digest.update((remote[path] or "<missing>").encode())
            continue
        try:
            fileio.hash_file(path, digest)
        except OSError:
            digest.update(b"<missing>")
    return digest.hexdigest()


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


def run_inference(saved_model: str, paths: list[str], beam: BeamConfig | None = None,
                  batch_size: int = 64, top_k: int = 3,
                  max_pixels: int = MAX_PIXELS) -> list[dict[str, Any]]:
    """One row per path, in order: class, probability, top-k, or an error. A Beam job
    with `beam`'s runner (default: in this process) that `imgpipe predict` and the
    infer step share: each file is read and checked on the workers as ingest checks it
    (a bad one becomes its error row, the job goes on), and the good ones are scored by
    Beam's RunInference with a KeyedModelHandler (key: index and path) over the
    serving_images signature (`components/inference/handler.py`; the model loads once per
    worker, `batch_size` images per call)."""
    if not paths:
        return []
    client.check(saved_model)
    import apache_beam as beam_sdk
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

    from components.io import beamio
    from components.inference import handler as inference

    beam = beam or BeamConfig()
    handler = KeyedModelHandler(inference.ServingImagesHandler(saved_model, batch_size, top_k))
    with beamio.temp_dir(beam, "predict") as tmp:
        with beam_sdk.Pipeline(options=beamio.pipeline_options(beam, len(paths))) as pipeline:
            checked = (pipeline
                       | "Files" >> beam_sdk.Create(list(enumerate(paths)))
                       | "ReadAndCheck" >> beam_sdk.FlatMap(inference.read_or_reject,
                                                            max_pixels).with_outputs(
                           inference.REJECTED, main="images"))
            scored = (checked.images
                      | "RunInference" >> RunInference(handler)
                      | "Rows" >> beam_sdk.Map(inference.keyed_row))
            _ = ((scored, checked[inference.REJECTED])
                 | "All" >> beam_sdk.Flatten()
                 | "Json" >> beam_sdk.Map(lambda pair: json.dumps([pair[0], pair[1]]))
                 | "Write" >> beam_sdk.io.WriteToText(fileio.join(tmp, "rows"),
                                                      file_name_suffix=".jsonl"))
        results = [json.loads(line) for name in fileio.glob(fileio.join(tmp, "rows*"))
                   for line in fileio.read_text(name).splitlines() if line.strip()]
    return [row for _, row in sorted(results, key=lambda pair: pair[0])]


def predict_local(saved_model: str, paths: list[str], batch_size: int = 64, top_k: int = 3,
                  progress: bool = True) -> list[dict[str, Any]]:
    """`run_inference` in this process (Beam's in-memory runner); `progress`: one line
    on stderr when it is done (images, seconds, rate); there is no per-batch bar, the
    batches run inside Beam."""
    started = time.perf_counter()
    rows = run_inference(saved_model, paths, BeamConfig(), batch_size, top_k)
    if progress and paths:
        seconds = time.perf_counter() - started
        print(f"{len(paths)} images in {seconds:.1f}s ({len(paths) / max(seconds, 1e-9):.0f}/s)",
              file=sys.stderr, flush=True)
    return rows


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
