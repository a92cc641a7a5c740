"""Helpers the tests share (plain functions, no test in here): tiny datasets (class
folders, a bad-input corpus, unusual image modes, an Examples artifact), readers of a
compiled KFP spec, a recording fake of a client library, a small registry, writes torn
by a full disk, and the command line run in this process."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

from components import artifacts, features

CLASSES = ("cat", "dog", "fox")


def png_bytes(array: np.ndarray, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save_args)
    return buffer.getvalue()


def class_pattern(label_index: int, variant: int, size: int = 12, channels: int = 1) -> np.ndarray:
    """A small image that is easy to tell apart per class and unique per variant."""
    rng = np.random.default_rng(1000 * label_index + variant)
    base = np.zeros((size, size), np.uint8)
    base[:, label_index % size] = 255                       # a class-specific stripe
    noise = rng.integers(0, 60, (size, size), dtype=np.uint8)
    image = np.maximum(base, noise)
    if channels == 3:
        image = np.stack([image, np.roll(image, 1, 0), np.roll(image, 1, 1)], axis=-1)
    return image


def make_class_folders(root: str, classes=("cat", "dog", "fox"), per_class: int = 10,
                       size: int = 12, channels: int = 1, first: int = 0) -> dict[str, int]:
    for li, label in enumerate(classes):
        os.makedirs(os.path.join(root, label), exist_ok=True)
        for v in range(first, first + per_class):
            with open(os.path.join(root, label, f"{v:03d}.png"), "wb") as handle:
                handle.write(png_bytes(class_pattern(li, v, size, channels)))
    return {label: per_class for label in classes}


def _png_with_header_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims width x height (CRC fixed, so it parses)."""
    data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr: ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def bad_corpus() -> dict[str, bytes]:
    """File name -> bytes of inputs that must be quarantined, one reason each."""
    good_jpeg = jpeg_bytes(Image.fromarray(class_pattern(0, 99, 32, 3)))
    return {
        "empty.png": b"",
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "notes.png": b"this is a text file, not an image\n" * 4,
        "bomb.png": _png_with_header_size(50_000, 50_000),
    }


def unusual_corpus() -> dict[str, bytes]:
    """File name -> bytes of valid images in modes that ingest must convert."""
    rgb = Image.fromarray(class_pattern(1, 7, 16, 3))
    rgba = np.dstack([class_pattern(1, 8, 16, 3), np.full((16, 16), 128, np.uint8)])
    sixteen = (class_pattern(2, 9, 16).astype(np.uint16) * 257)
    buffer = io.BytesIO()
    Image.fromarray(sixteen).save(buffer, format="PNG")  # saved as I;16 -> 16-bit PNG
    out = {
        "cmyk.jpg": jpeg_bytes(rgb.convert("CMYK")),
        "progressive.jpg": jpeg_bytes(rgb, progressive=True),
        "sixteen.png": buffer.getvalue(),
        "rgba.png": png_bytes(rgba),
        "palette.gif": _save(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
        "bitmap.bmp": _save(rgb, "BMP"),
        "photo.webp": _save(rgb, "WEBP", lossless=True),
    }
    return out


def _save(image: Image.Image, fmt: str, **args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **args)
    return buffer.getvalue()


def write_files(folder: str, files: dict[str, bytes]) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as handle:
            handle.write(data)
        paths.append(path)
    return paths


def examples_artifact(tmp_path, name="examples", per_class=6, extra_eval=(), extra_train=(),
                      size=12, channels=1):
    """An Examples artifact written directly (lets tests plant records ingest would reject)."""
    import tensorflow as tf

    uri = str(tmp_path / name)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with artifacts.writing(uri, "Examples") as writer:
        raw = {"train": [], "eval": []}
        for li, label in enumerate(CLASSES):
            for v in range(per_class):
                split = "eval" if v == 0 else "train"
                image = class_pattern(li, v, size, channels)
                raw[split].append(features.encode_example({
                    features.IMAGE: png_bytes(image), features.FORMAT: "png",
                    features.LABEL: label, features.ID: f"{label}{v}"}))
        raw["eval"].extend(extra_eval)
        raw["train"].extend(extra_train)
        for split, records in raw.items():
            path = writer.file(split, "part-00000-of-00001.tfrecord.gz")
            tf.io.gfile.makedirs(writer.file(split))
            with tf.io.TFRecordWriter(path, options) as out:
                for record in records:
                    out.write(record)
        counts = {split: {} for split in raw}          # as ingest records them
        for split, records in raw.items():
            for record in records:
                label = tf.train.Example.FromString(record).features.feature[
                    features.LABEL].bytes_list.value[0].decode()
                counts[split][label] = counts[split].get(label, 0) + 1
        writer.properties = {"class_names": list(CLASSES), "counts": counts,
                             "num_examples": sum(len(r) for r in raw.values())}
        art = writer.commit()
    return art, raw


def smooth_image(seed: int, size: int = 32, channels: int = 3) -> np.ndarray:
    """A photo-like image: a random 6x6 field upsampled smoothly (JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (6, 6, channels), dtype=np.uint8)
    image = Image.fromarray(field if channels == 3 else field[..., 0])
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))


def make_photo_folders(root: str, per_class: int, classes=CLASSES, first: int = 0,
                       jpeg_copies_of: dict | None = None) -> None:
    """ROOT/CLASS/NNN.png smooth images; `jpeg_copies_of` {class: [seeds]} adds JPEG
    quality-75 re-encodes of those images as ROOT/CLASS/copy-NNN.jpg."""
    for li, label in enumerate(classes):
        os.makedirs(os.path.join(root, label), exist_ok=True)
        for v in range(first, first + per_class):
            with open(os.path.join(root, label, f"{v:03d}.png"), "wb") as handle:
                handle.write(png_bytes(smooth_image(1000 * li + v)))
        for v in (jpeg_copies_of or {}).get(label, []):
            with open(os.path.join(root, label, f"copy-{v:03d}.jpg"), "wb") as handle:
                handle.write(jpeg_bytes(Image.fromarray(smooth_image(1000 * li + v)), quality=75))


def race(target, args_per_process: list[tuple], timeout: float = 60) -> tuple[list, list]:
    """Runs `target(*args, barrier, queue)` in one forked process per args tuple, all
    released at once by the barrier; returns (exit codes, what each put on the queue,
    in the order they finished). `timeout` bounds the whole race: a process still
    running then is killed (its code -9), not left behind."""
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(len(args_per_process)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, queue))
             for args in args_per_process]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:              # one still running at the deadline: killed (-9)
        if proc.is_alive():
            proc.kill()
            proc.join()
    codes = [proc.exitcode for proc in procs]
    return codes, [queue.get(timeout=5) for code in codes if code == 0]


def task_codes(spec: dict) -> dict:
    """task -> its `code` input in a compiled KFP spec, for the tasks at the root and
    inside the gates (None for a task that takes none)."""
    found = {}
    for dag_spec in [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values()
                                             if "dag" in c]:
        for name, task in dag_spec["tasks"].items():
            if "componentRef" in task and not name.startswith("condition"):
                found[name] = task.get("inputs", {}).get("parameters", {}).get(
                    "code", {}).get("runtimeValue", {}).get("constant")
    return found


def task_inputs(spec: dict) -> dict:
    """task name -> its task entry (inputs, caching, dependencies) in a compiled KFP
    spec, over the root DAG and every condition."""
    out = {}
    for component in [spec["root"], *spec["components"].values()]:
        for name, task in component.get("dag", {}).get("tasks", {}).items():
            out[name] = task
    return out


class Recorder:
    """A fake client module: records calls and checks them against the real signatures."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def check(self, name, target, *args, **kwargs):
        import inspect

        inspect.signature(target).bind(*args, **kwargs)      # the real API accepts it
        self.calls.append((name, args, kwargs))


# --- a small registry --------------------------------------------------------------------


def fake_saved_model(path, marker="x"):
    os.makedirs(os.path.join(path, "variables"))
    with open(os.path.join(path, "saved_model.pb"), "w") as handle:
        handle.write(marker * 1000)
    with open(os.path.join(path, "variables", "variables.index"), "w") as handle:
        handle.write(marker)
    return str(path)


def card(blessed=True, infra=True, accuracy=0.9):
    return {"blessing": {"blessed": blessed, "reason": "ok" if blessed else "accuracy too low"},
            "infra_validation": {"passed": infra, "reason": "served" if infra else "no"},
            "metrics": {"accuracy": accuracy}}


def registry_with_versions(tmp_path, versions: int, production: list[int]):
    """A Registry at tmp_path/serving with model `m` pushed `versions` times (a stand-in
    SavedModel, a blessed card) and `production` moved onto each of `production` in turn."""
    from components.registry.versions import Registry

    reg = Registry(str(tmp_path / "serving"))
    src = fake_saved_model(tmp_path / "sm")
    for _ in range(versions):
        reg.push("m", src, card())
    for number in production:
        reg.set_alias(f"m:{number}", "production")
    return reg


def committed_artifact(uri, kind, files, properties=None):
    """A committed artifact of `kind` at `uri` holding `files` (name -> text)."""
    with artifacts.writing(str(uri), kind) as writer:
        for name, text in files.items():
            os.makedirs(os.path.dirname(writer.file(name)), exist_ok=True)
            with open(writer.file(name), "w") as handle:
                handle.write(text)
        writer.properties = properties or {}
        return writer.commit()


def push_inputs(tmp_path, seed="pb"):
    """A blessed, infra-validated model and what push reads besides it (the push
    step's inputs: committed artifacts with stand-in contents)."""
    import json

    saved_model = artifacts.Model.SAVED_MODEL
    folder = tmp_path / f"inputs-{seed}"
    return (
        committed_artifact(folder / "model", artifacts.Model,
                           {f"{saved_model}/{artifacts.SAVED_MODEL_PB}": seed},
                           {"kind": "dense", "tensorflow_version": "2.21.0"}),
        committed_artifact(folder / "blessing", artifacts.ModelBlessing, {
            artifacts.ModelBlessing.FILE: json.dumps(
                {"blessed": True, "reason": "ok", "baseline": None, "gate": "point",
                 "checks": []})}, {"blessed": True}),
        committed_artifact(folder / "infra", artifacts.InfraBlessing, {
            artifacts.InfraBlessing.FILE: json.dumps({"passed": True, "reason": "served"})},
            {"passed": True}),
        committed_artifact(folder / "evaluation", artifacts.ModelEvaluation, {
            artifacts.ModelEvaluation.FILE: json.dumps(
                {"metrics": {"slices": {"overall": {"accuracy": 0.9}}, "per_class": {}}})}),
        committed_artifact(folder / "statistics", artifacts.ExampleStatistics, {
            artifacts.ExampleStatistics.FILE: json.dumps({"num_examples": 10})}))


# --- files a user keeps, written when the disk fills ---------------------------------------


@contextlib.contextmanager
def torn_writes(monkeypatch, folder, after: int = 0):
    """Every file opened for writing under `folder`, after the first `after` ones, gets
    half of its first write and then a full disk (ENOSPC): what a crash or a full disk
    mid-write leaves. `open` and `io.open` (pathlib) both."""
    import builtins
    import errno

    real_open, folder = builtins.open, os.path.abspath(folder)
    opened = {"n": 0}

    class Torn:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device", self.handle.name)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def opener(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and \
                os.path.abspath(file).startswith(folder + os.sep):
            opened["n"] += 1
            if opened["n"] > after:
                return Torn(handle)
        return handle

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    try:
        yield opened
    finally:
        monkeypatch.setattr(builtins, "open", real_open)
        monkeypatch.setattr(io, "open", real_open)


def file_tree(folder) -> dict[str, bytes]:
    """relative path -> bytes of every file under `folder`."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


# --- the command line ----------------------------------------------------------------------

# A digits config that runs in seconds; cli_config writes it with a push destination.
CLI_BASE = {"name": "base", "data": {"source": "builtin:digits", "image_size": [8, 8],
                                     "channels": 1},
            "model": {"kind": "cnn", "hidden_units": [16]},
            "train": {"epochs": 1, "batch_size": 32},
            "evaluate": {"thresholds": {"accuracy": {"min": 0.1}}}}


def cli_config(tmp_path, **sections) -> str:
    """tmp_path/base.yaml: CLI_BASE pushing to tmp_path/serving, each of `sections`
    merged into its section."""
    import yaml

    tree = {**CLI_BASE, "push": {"destination": str(tmp_path / "serving")}}
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `imgpipe ARGV` in this process."""
    from pipeline import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, args, code=2) -> str:
    """`imgpipe ARGS` exits `code` with one `imgpipe: error:` line on stderr; returns it."""
    from pipeline import cli

    assert cli.main(args) == code, capsys.readouterr()
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgpipe: error:") and len(err.splitlines()) == 1, err
    return err


# --- ingest and validate ------------------------------------------------------------------


def run_ingest(tmp_path, source, name="out", **data_args):
    """The ingest step on `source` into tmp_path/NAME: (summary, examples, statistics
    artifact, statistics)."""
    from components.config.beam import BeamConfig
    from components.config.data import DataConfig
    from components.config.ingest import IngestConfig
    from components.steps import ingest

    ingest_args = data_args.pop("ingest", {})
    data = DataConfig(source=str(source), **data_args)
    summary = ingest.run(data, IngestConfig(**ingest_args), BeamConfig(),
                         examples=str(tmp_path / name / "examples"),
                         statistics=str(tmp_path / name / "statistics"))
    examples = artifacts.read(str(tmp_path / name / "examples"), artifacts.Examples)
    stats_art = artifacts.read(str(tmp_path / name / "statistics"), artifacts.ExampleStatistics)
    stats = artifacts.ExampleStatistics.read(stats_art)
    return summary, examples, stats_art, stats


def read_examples(examples, split):
    """Parses a split back with TensorFlow and decodes every image."""
    import tensorflow as tf

    files = artifacts.Examples.shards(examples, split)
    out = []
    spec = {key: tf.io.FixedLenFeature([], tf.string)
            for key in ("image/encoded", "image/format", "label", "id", "source")}
    spec.update({key: tf.io.FixedLenFeature([], tf.int64) for key in ("height", "width", "channels")})
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        parsed = tf.io.parse_single_example(raw, spec)
        image = tf.io.decode_image(parsed["image/encoded"], expand_animations=False)
        out.append({key: (value.numpy().decode() if value.dtype == tf.string else int(value))
                    for key, value in parsed.items() if key != "image/encoded"}
                   | {"image": image.numpy()})
    return out


# ingest's statistics of a 100-image cat/dog set (validate's tests change a copy)
STATISTICS = {
    "num_inputs": 100, "num_examples": 100, "num_quarantined": 0, "bad_fraction": 0.0,
    "counts": {"train": {"cat": 45, "dog": 45}, "eval": {"cat": 5, "dog": 5}},
    "class_names": ["cat", "dog"], "sizes": {"12x12": 90, "16x12": 10},
    "channels": {"1": 100}, "formats": {"png": 100}, "converted": 0,
    "duplicates": {"train": 0, "eval": 0}, "quarantine_reasons": {}, "near_duplicate_rms": 6.0,
    "pixels": {"train": {"cat": {"brightness_mean": 0.4, "brightness_std": 0.1,
                                 "contrast_mean": 0.2},
                         "dog": {"brightness_mean": 0.5, "brightness_std": 0.1,
                                 "contrast_mean": 0.2}}},
}


def random_thumbnail(rng):
    return rng.integers(0, 256, 256, dtype=np.uint8)


def stats_artifact(tmp_path, name, stats, thumbnails=None):
    """A Statistics artifact with the given stats and (id, split, thumbnail) rows."""
    import base64
    import json

    rng = np.random.default_rng(len(name))
    if thumbnails is None:
        thumbnails = [(f"t{i}", "train", random_thumbnail(rng)) for i in range(90)]
        thumbnails += [(f"e{i}", "eval", random_thumbnail(rng)) for i in range(10)]
    with artifacts.writing(str(tmp_path / name), "ExampleStatistics") as writer:
        open(writer.file(artifacts.ExampleStatistics.FILE), "w").write(json.dumps(stats))
        with open(writer.file(artifacts.ExampleStatistics.THUMBNAILS), "w") as handle:
            for record_id, split, thumb in thumbnails:
                encoded = base64.b64encode(np.asarray(thumb, np.uint8).tobytes()).decode()
                handle.write(f"{record_id}\t{split}\t{encoded}\n")
        return writer.commit()


# --- TF Serving's model config file ------------------------------------------------------


def parse_serving_config(text: str):
    """TF Serving's model config file (text proto) parsed back with its protos."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def configs_by_name(config):
    return {c.name: c for c in config.model_config_list.config}


# --- files that are not regular files ------------------------------------------------------


@contextlib.contextmanager
def fifo_watch(path: str):
    """Makes a FIFO at `path` and watches it while the block runs: whoever opens it to
    read (which blocks until a writer comes: the hang the code must never reach) is let
    go at once with an empty stream, and the time is recorded in the list yielded, so a
    test fails on the assertion instead of hanging."""
    import threading
    import time

    os.mkfifo(path)
    opened: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)   # ENXIO: no reader
            except OSError:
                stop.wait(0.02)
                continue
            opened.append(time.monotonic())
            os.close(fd)                 # the reader reads the end of the stream
            stop.wait(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


# --- a real disk that fills -----------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder, size_kib: int):
    """A real file system of `size_kib` KiB mounted at `folder` (tmpfs): writes past it
    fail with ENOSPC, as on a full disk. Yields the folder; None where mounting is not
    allowed (not root, no mount namespace), for the caller to use a file size limit
    (`size_limited`) or skip."""
    import subprocess

    os.makedirs(folder, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
        capture_output=True).returncode == 0
    try:
        yield str(folder) if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def size_limited(kib: int):
    """A `preexec_fn` for a child process whose files may grow to `kib` KiB at most
    (RLIMIT_FSIZE, `ulimit -f`): a write past it fails with EFBIG (Python ignores
    SIGXFSZ), a storage failure as a full disk is, without root."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))

    return limit
