"""Artifacts: a directory plus an `artifact.json` manifest that is written last.

A directory without a complete manifest does not exist for readers: `read` rejects
it, so a step killed half-way leaves nothing that a later step or a cache lookup
would accept. On local disks the content is written under a staging name and
renamed into place after the manifest; on object stores (gs://) the manifest is the
last object written, which is the same guarantee there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, TypedDict

from components.io import fileio
from components import runtime
from components.errors import ArtifactError

MANIFEST_NAME = "artifact.json"
# 2: the manifest lists every file with its size and SHA-256 (`files`).
# 3: a file on an object store that keeps checksums (gs://) carries the store's own
#    ("crc32c") instead of a SHA-256; version 2 manifests still read and verify.
MANIFEST_VERSION = 3
_REQUIRED_KEYS = ("type", "manifest_version", "fingerprint", "properties", "producer", "created",
                  "files")


# What marks a SavedModel directory complete (TF Serving treats it as ready).
SAVED_MODEL_PB = "saved_model.pb"
# The splits of every Examples artifact, in this order.
SPLITS = ("train", "eval")

# --- artifact types: each owns its layout (file names, typed readers and writers) -----


def _uri(at: "Artifact | str") -> str:
    return at.uri if isinstance(at, Artifact) else at


def _read_json(at: "Artifact | str", name: str) -> Any:
    return json.loads(fileio.read_text(fileio.join(_uri(at), name)))


def _write_json(writer: "ArtifactWriter", name: str, value: Any, **dump: Any) -> None:
    fileio.write_text(writer.file(name), json.dumps(value, indent=2, **dump))


class ArtifactType:
    """An artifact type: its docstring documents the layout, its constants name the
    files, and `FILE` (when set) is the JSON document most readers want:
    `Type.read(artifact_or_uri)`, `Type.write(writer, value)`, and `Type.load(uri)`
    (None when the file is absent or unreadable: the report of a run that stopped)."""

    FILE: str | None = None

    @classmethod
    def read(cls, at: "Artifact | str") -> Any:
        return _read_json(at, cls.FILE)

    @classmethod
    def write(cls, writer: "ArtifactWriter", value: Any, **dump: Any) -> None:
        _write_json(writer, cls.FILE, value, **dump)

    @classmethod
    def load(cls, uri: str | None) -> Any:
        if not uri:
            return None
        try:
            return cls.read(uri)
        except (OSError, ValueError):
            return None

    @classmethod
    def file_names(cls) -> tuple[str, ...]:
        """Every file or folder name this type's layout defines (its upper-case str
        constants)."""
        return tuple(sorted({value for key, value in vars(cls).items()
                             if key.isupper() and isinstance(value, str)}))


class Examples(ArtifactType):
    """Raw examples. Layout: `{uri}/{split}/*.tfrecord.gz` (GZIP TFRecord of
    `tf.train.Example` with `image/encoded`, `image/format`, `label`, `height`,
    `width`, `channels`, `id`, `source`). Properties: `splits`, `counts`,
    `class_names`.

    A window of data drops (spans) is an Examples artifact that holds no records of its
    own: its property `parts` lists each span's Examples artifact (oldest first; `uri`,
    `span`, `fingerprint`), reused by reference, and `eval_spans` says which parts'
    eval splits are evaluated on (`newest`: the newest span's, the older spans' eval
    images then train too; `all`). `counts` are what the splits hold read that way."""

    SHARDS = "*.tfrecord.gz"
    PARTS = "parts.json"      # a window's parts, as in its `parts` property

    @classmethod
    def patterns(cls, at: "Artifact | str", split: str) -> list[str]:
        """Globs of the split's TFRecord files (one per part for a window of spans)."""
        if not isinstance(at, Artifact) or not at.properties.get("parts"):
            return [fileio.join(_uri(at), split, cls.SHARDS)]
        parts = at.properties["parts"]
        newest_only = at.properties.get("eval_spans", "newest") == "newest"
        out = []
        for index, part in enumerate(parts):
            newest = index == len(parts) - 1
            splits = ([split] if not newest_only else
                      ["eval"] if split == "eval" and newest else
                      [] if split == "eval" else ["train"] if newest else ["train", "eval"])
            out += [fileio.join(part["uri"], s, cls.SHARDS) for s in splits]
        return out

    @classmethod
    def shards(cls, at: "Artifact | str", split: str) -> list[str]:
        return [path for pattern in cls.patterns(at, split) for path in fileio.glob(pattern)]


class ExampleStatistics(ArtifactType):
    """Ingest statistics (TFX's ExampleStatistics). Layout: `{uri}/stats.json` (counts
    per split and class, size/channel histograms, exact duplicates, quarantine counts,
    per-class brightness and contrast, eval images dropped or moved to train),
    `{uri}/thumbnails.tsv` (id, split, base64 16x16 grayscale thumbnail per image, for
    near-duplicate checks), `{uri}/quarantine.jsonl` (one rejected input per line:
    path, reason). `partial_stats.json` is ingest's own staging file, never committed."""

    FILE = "stats.json"
    THUMBNAILS = "thumbnails.tsv"
    QUARANTINE = "quarantine.jsonl"
    PARTIAL = "partial_stats.json"


class Schema(ArtifactType):
    """The enforced schema. Layout: `{uri}/schema.pbtxt` (TFMD Schema text proto)."""

    TEXT = "schema.pbtxt"

    @classmethod
    def read(cls, at: "Artifact | str") -> str:
        return fileio.read_text(fileio.join(_uri(at), cls.TEXT))

    @classmethod
    def write(cls, writer: "ArtifactWriter", value: str, **_: Any) -> None:
        fileio.write_text(writer.file(cls.TEXT), value)


class ExampleAnomalies(ArtifactType):
    """Validation result (TFX's ExampleAnomalies). Layout: `{uri}/anomalies.json` (list
    of anomalies with kind, feature, description, severity)."""

    FILE = "anomalies.json"


class TransformGraph(ArtifactType):
    """tensorflow-transform output. Layout: `{uri}/transform_fn/`,
    `{uri}/transformed_metadata/` (as written by `WriteTransformFn`) and, when
    materialized, `{uri}/examples/{split}/part-*.tfrecord.gz` (per example: the resized
    pixels as uint8 bytes, `label_id`, `pixel_scale`, `pixel_offset`; see
    components/features), with `{uri}/counts.json` (examples per split). Properties:
    `label_vocabulary`, `num_classes`, `image_shape`, `materialized`, `counts`."""

    TRANSFORM_FN = "transform_fn"
    METADATA = "transformed_metadata"
    EXAMPLES = "examples"
    COUNTS = "counts.json"

    @classmethod
    def shards(cls, at: "Artifact | str", split: str) -> list[str]:
        return fileio.glob(fileio.join(_uri(at), cls.EXAMPLES, split, Examples.SHARDS))


class Model(ArtifactType):
    """Trained model. Layout: `{uri}/saved_model/` (SavedModel with serving
    signatures), `{uri}/model.keras` (the Keras model, a base for later runs),
    `{uri}/history.json`, `{uri}/logs/` (TensorBoard)."""

    SAVED_MODEL = "saved_model"
    KERAS_FILE = "model.keras"
    FILE = "history.json"
    LOGS = "logs"


class ModelEvaluation(ArtifactType):
    """The evaluator's output (TFX's ModelEvaluation). Layout: `{uri}/tfma/` (TFMA
    results), `{uri}/metrics.json` (per-slice and per-class metrics, confusion matrix,
    paired comparison with the baseline), `{uri}/predictions.jsonl` (one eval example
    per line), `{uri}/curves.npz` (per-class histograms of the predicted probability,
    positives and negatives apart: ROC, AUC and calibration), `{uri}/misclassified/*.png`
    (thumbnails of the most confident mistakes; `mistakes.json` is the scoring job's
    staging list of them)."""

    FILE = "metrics.json"
    TFMA = "tfma"
    PREDICTIONS = "predictions.jsonl"
    CURVES = "curves.npz"
    GALLERY = "misclassified"
    MISTAKES = "mistakes.json"


class HyperParameters(ArtifactType):
    """A search's result (the tune step). Layout: `{uri}/hyperparameters.json` (best
    values as dotted config keys, the objective and its best score, every trial's
    values, score and seconds, the search space and algorithm; or, with no search, no
    values). Properties: `best`, `searched`, `source`."""

    FILE = "hyperparameters.json"


class ModelBlessing(ArtifactType):
    """The evaluator's verdict (TFX's ModelBlessing). Layout: `{uri}/blessing.json`
    (blessed, every check with value, bound and verdict, baseline)."""

    FILE = "blessing.json"


class InfraBlessing(ArtifactType):
    """The infra validator's verdict (TFX's InfraBlessing). Layout:
    `{uri}/infra_validation.json` (passed, reason, probe report) and, when the probe
    passed, `{uri}/tf_serving_warmup_requests` (TF Serving warmup records: a TFRecord
    file of `PredictionLog`s, one `PredictRequest` per serving signature; written and
    read by `components.inference.serving_config`, copied into a pushed version's
    `assets.extra/`). Artifacts written before warmup records have none."""

    FILE = "infra_validation.json"
    WARMUP = "tf_serving_warmup_requests"

    @classmethod
    def warmup(cls, at: "Artifact | str") -> str | None:
        """The path of the warmup records, None when this verdict has none."""
        path = fileio.join(_uri(at), cls.WARMUP)
        return path if fileio.exists(path) else None


class PushedModel(ArtifactType):
    """What the push step did. Layout: `{uri}/push.json` (pushed or not and why,
    registry root, model name, version, path, alias moved). The version it names, in
    the registry, holds beside the SavedModel the `ModelCard` (`CARD`, which evaluate
    reads of the baseline) and, when infra validation wrote them, TF Serving's warmup
    records at its fixed path (`WARMUP`)."""

    FILE = "push.json"
    CARD = "model_card.json"
    WARMUP = "assets.extra/tf_serving_warmup_requests"


class InferenceResult(ArtifactType):
    """The infer step's batch predictions (TFX's InferenceResult). Layout:
    `{uri}/predictions.jsonl` (one line per input file, in listing order: path, class,
    probability, top_k, error, model as NAME:VERSION; `components.inference.predict.write_rows`),
    `{uri}/inference_summary.json` (the model, the source and the span read, files,
    scored, errors, counts per predicted class; or, when nothing was pushed, why
    nothing was scored)."""

    FILE = "inference_summary.json"
    PREDICTIONS = "predictions.jsonl"


class ModelCard(TypedDict, total=False):
    """A pushed version's model card (`PushedModel.CARD` in the registry, written by the
    push step, read by `imgpipe models`, the report and the registry's rules)."""

    model: dict[str, Any]            # kind, trainable_params, image_shape, epochs, fingerprint,
    #                                  architecture, warm_start ({ref, version} or None)
    hyperparameters: dict[str, Any]
    label_vocabulary: list[str]
    metrics: dict[str, float]        # the overall slice
    per_class: dict[str, Any]
    comparison: dict[str, Any] | None
    blessing: dict[str, Any]         # blessed, reason, baseline, gate, checks
    infra_validation: dict[str, Any]  # passed, reason
    data: dict[str, Any]             # fingerprint, examples, counts, classes, quarantine
    config: dict[str, Any] | None
    package_version: str
    git_commit: str | None
    run_id: str | None
    pipeline: str | None
    artifacts: dict[str, str]
    created: str
    pushed: str


def card_field(card: ModelCard | dict[str, Any], dotted: str, default: Any = None) -> Any:
    """`card_field(card, "model.kind")`: a value of a (possibly older or partial) model
    card, `default` where a part is missing or not a mapping."""
    value: Any = card
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Examples, ExampleStatistics, Schema, ExampleAnomalies, TransformGraph,
                HyperParameters, Model, ModelEvaluation, ModelBlessing, InfraBlessing,
                PushedModel, InferenceResult)
}



def register_type(cls: type) -> type:
    """A class decorator for an artifact type defined outside this module (a user's own
    step): its name becomes known to writers, readers and the step contract."""
    if not (isinstance(cls, type) and issubclass(cls, ArtifactType)):
        raise TypeError(f"{cls!r} is not an ArtifactType subclass")
    known = TYPES.get(cls.__name__)
    if known is not None and known is not cls and known.__module__ == __name__:
        raise TypeError(f"artifact type {cls.__name__} is a built-in type")
    TYPES[cls.__name__] = cls
    return cls


# Type names of manifests (and metadata rows) written before TFX's names were adopted.
# "Blessing" was both verdicts: its file says which (`type_name`).
RENAMED = {"Statistics": "ExampleStatistics", "Anomalies": "ExampleAnomalies",
           "Evaluation": "ModelEvaluation"}
_OLD_BLESSING = "Blessing"


def type_name(recorded: str, files: dict[str, Any] | None = None) -> str:
    """The current name of a recorded artifact type (a manifest's or a metadata row's):
    an older imgpipe's name maps to its TFX name, so artifacts it wrote still read."""
    if recorded == _OLD_BLESSING:
        return (InfraBlessing.__name__ if InfraBlessing.FILE in (files or {})
                else ModelBlessing.__name__)
    return RENAMED.get(recorded, recorded)


def _type_matches(actual: str, wanted: str) -> bool:
    if wanted == _OLD_BLESSING:      # an older metadata row: either verdict
        return actual in (ModelBlessing.__name__, InfraBlessing.__name__)
    return actual == type_name(wanted)


# --- reading -----------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """A committed artifact: where it is and what its manifest says."""

    uri: str
    type: str
    fingerprint: str
    properties: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def path(self, *parts: str) -> str:
        """A path inside the artifact directory."""
        return fileio.join(self.uri, *parts)


def read(uri: str, expected_type: type | str | None = None) -> Artifact:
    """Reads a committed artifact; raises ArtifactError for anything incomplete."""
    manifest_path = fileio.join(uri, MANIFEST_NAME)
    if not fileio.exists(manifest_path):
        raise ArtifactError(
            f"{uri} is not a committed artifact (no {MANIFEST_NAME}); it was never "
            "finished or was written by a killed step. Rerun the step that produces it.")
    try:
        manifest = json.loads(fileio.read_text(manifest_path))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{manifest_path} is unreadable ({exc}); rerun the step "
                            "that produces it.") from exc
    missing = [key for key in _REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{manifest_path} is incomplete or from an older imgpipe (missing "
                            f"{', '.join(missing)}); rerun the step that produces it.")
    wanted = expected_type if isinstance(expected_type, str) or expected_type is None \
        else expected_type.__name__
    actual = type_name(manifest["type"], manifest["files"])
    if wanted and not _type_matches(actual, wanted):
        raise ArtifactError(f"{uri} holds a {actual} artifact, expected {type_name(wanted)}.")
    return Artifact(uri=uri, type=actual, fingerprint=manifest["fingerprint"],
                    properties=manifest["properties"], producer=manifest["producer"],
                    created=manifest["created"], files=manifest["files"])


def is_committed(uri: str) -> bool:
    """True when `uri` holds a readable, complete artifact."""
    try:
        read(uri)
    except ArtifactError:
        return False
    return True


# --- fingerprints ------------------------------------------------------------------


def fingerprint_json(value: Any) -> str:
    """A content hash of a JSON-serializable value (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _checksum_kind(entry: dict[str, Any]) -> str | None:
    """Which content checksum a manifest entry holds: "sha256" (imgpipe hashed the
    bytes), or the object store's own ("crc32c", "md5"); None when it holds none."""
    return next((kind for kind in ("sha256", *fileio.STORED_CHECKSUMS) if entry.get(kind)),
                None)


def list_files(root: str) -> dict[str, dict[str, Any]]:
    """Every file under `root` but the manifest: relative path -> size and a content
    checksum. On an object store that keeps checksums (gs://) that is the store's own
    (`{"size", "crc32c"}`) from one listing, so committing reads no object back (after a
    Dataflow ingest that would stream the whole dataset through the task); elsewhere the
    SHA-256 of the bytes."""
    files = {}
    prefix = root.rstrip("/") + "/"
    stored = fileio.stored_checksums(root)
    for path in (sorted(stored) if stored is not None else fileio.walk_files(root)):
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)
        if rel == MANIFEST_NAME:
            continue
        entry = (stored or {}).get(path)
        files[rel] = (dict(entry) if entry and _checksum_kind(entry) else
                      {"size": fileio.file_size(path), "sha256": fileio.hash_file(path)})
    return files


def fingerprint_files(files: dict[str, dict[str, Any]]) -> str:
    """A content hash over a file listing (relative paths and content checksums: the
    SHA-256, or the object store's checksum with the size)."""
    def content(entry: dict[str, Any]) -> str:
        kind = _checksum_kind(entry)
        return entry["sha256"] if kind == "sha256" else f"{kind}:{entry['size']}:{entry[kind]}"

    return fingerprint_json({rel: content(entry) for rel, entry in files.items()})


def verify(artifact: Artifact, known: dict[str, str] | None = None
           ) -> tuple[list[str], dict[str, str]]:
    """Checks every file the manifest lists: present, same size, same content.

    `known`: relative path -> `fileio.stat_signature` of a file whose content was
    verified before; a file with an unchanged signature is not read again. Returns
    (problems, signatures of the files now verified). A problem reads like
    "saved_model/variables/variables.index is missing"."""
    known = known or {}
    problems, verified = [], {}
    # On gs:// one listing gives every object's size and checksum (None elsewhere).
    stored = fileio.stored_checksums(artifact.uri)
    for rel, entry in sorted(artifact.files.items()):
        path = fileio.join(artifact.uri, rel)
        signature = fileio.stat_signature(path)
        if signature is not None and known.get(rel) == signature:
            verified[rel] = signature
            continue
        listed = stored.get(path) if stored is not None else None
        size = listed["size"] if listed else (None if stored is not None
                                               else fileio.file_size(path))
        if size is None:
            problems.append(f"{rel} is missing")
        elif size != entry["size"]:
            problems.append(f"{rel} changed size since it was written ({entry['size']} -> "
                            f"{size} bytes)")
        else:
            problem = _content_problem(rel, path, entry, listed)
            if problem:
                problems.append(problem)
            elif signature is not None:
                verified[rel] = signature
    return problems, verified


def _content_problem(rel: str, path: str, entry: dict[str, Any],
                     listed: dict[str, Any] | None) -> str | None:
    """Compares a file with its manifest entry like with like: a recorded SHA-256 with
    the SHA-256 of the bytes now (older manifests on gs:// too), a recorded store
    checksum with the one the store lists now (no object read)."""
    kind = _checksum_kind(entry)
    if kind == "sha256":
        now = fileio.hash_file(path)
    elif kind is not None and listed and listed.get(kind):
        now = listed[kind]
    else:
        recorded = f"a {kind} checksum, which the storage does not list for {path}" \
            if kind else "no checksum"
        return (f"{rel} cannot be checked: its manifest records {recorded}; rerun the step "
                "that produces it.")
    return None if now == entry[kind] else f"{rel} changed since it was written (content differs)"


# --- writing -----------------------------------------------------------------------


class ArtifactWriter:
    """Collects an artifact's files under `path`, then `commit()` publishes it.

    The invoker hands every declared output to its step as an open writer (type and
    producer set) and commits it when the step returns, or aborts it when the step
    raises. The step writes files under `writer.path` (`writer.file(...)`), sets
    `writer.properties` (and optionally `writer.fingerprint`; the default hashes every
    file). Until the commit the final `uri` holds nothing a reader accepts. Storage is
    touched only when the step first asks for a path, so a replica that writes nothing
    (a non-chief training worker: `discard()`) leaves the shared location alone.
    """

    def __init__(self, uri: str, artifact_type: type | str, producer: dict[str, Any] | None = None):
        self.uri = uri.rstrip("/")
        self.type = artifact_type if isinstance(artifact_type, str) else artifact_type.__name__
        if self.type not in TYPES:
            raise ArtifactError(f"unknown artifact type {self.type!r}; known: {sorted(TYPES)}")
        self.producer = dict(producer or {})
        self.properties: dict[str, Any] = {}
        self.fingerprint: str | None = None
        self._remote = fileio.is_remote(self.uri)
        self._path: str | None = None
        self.committed: Artifact | None = None
        self.discarded = False
        if not self._remote and fileio.exists(fileio.join(self.uri, MANIFEST_NAME)):
            raise ArtifactError(f"{self.uri} already holds a committed artifact; "
                                "artifacts are immutable, write to a new location.")

    @property
    def path(self) -> str:
        """Where the artifact's files are written (a staging name on local disks)."""
        if self._path is None:
            self._path = self._open()
        return self._path

    def _open(self) -> str:
        path = self.uri if self._remote else f"{self.uri}.staging-{uuid.uuid4().hex[:8]}"
        if fileio.exists(self.uri) and not self._remote:
            if fileio.exists(fileio.join(self.uri, MANIFEST_NAME)):
                raise ArtifactError(f"{self.uri} was committed while this writer was open; "
                                    "artifacts are immutable, write to a new location.")
            fileio.rmtree(self.uri)  # debris of a killed writer: never committed
        if not self._remote:
            for debris in fileio.glob(f"{self.uri}.staging-*"):
                fileio.rmtree(debris)  # staging left by a killed writer of this uri
        if self._remote:
            fileio.rmtree(fileio.join(self.uri, MANIFEST_NAME))
        fileio.makedirs(path)
        return path

    def file(self, *parts: str) -> str:
        """A path inside the artifact being written."""
        return fileio.join(self.path, *parts)

    def commit(self) -> Artifact:
        """Writes the manifest last and publishes the directory at `uri`. The manifest
        records every file's size and content hash, so a reader (the cache) can tell
        later whether the artifact is still what was committed. Committing twice returns
        the first commit's artifact."""
        if self.committed is not None:
            return self.committed
        if self.discarded:
            raise ArtifactError(f"{self.uri} was discarded; it cannot be committed.")
        files = list_files(self.path)
        fingerprint = self.fingerprint or fingerprint_files(files)
        manifest = {
            "type": self.type,
            "manifest_version": MANIFEST_VERSION,
            "fingerprint": fingerprint,
            "properties": self.properties,
            "producer": self.producer,
            "created": runtime.utc_now(),
            "files": files,
        }
        fileio.write_text_atomic(fileio.join(self.path, MANIFEST_NAME),
                                 json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if not self._remote:
            fileio.rename(self.path, self.uri)
        self.committed = read(self.uri, self.type)
        return self.committed

    def abort(self) -> None:
        """Removes what was written; the artifact never existed."""
        if self._path is not None and not self._remote and self.committed is None:
            fileio.rmtree(self._path)

    def discard(self) -> None:
        """This replica writes nothing here (another one, the chief, commits it)."""
        self.abort()
        self.discarded = True


@contextlib.contextmanager
def writing(uri: str, artifact_type: type | str,
            producer: dict[str, Any] | None = None) -> Iterator[ArtifactWriter]:
    """`with writing(uri, Examples) as w: ...` for code outside a step (tests, tools):
    commits when the block ends, aborts on any exception. Steps get their writers
    from the invoker instead."""
    writer = ArtifactWriter(uri, artifact_type, producer)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    if not writer.discarded:
        writer.commit()
