"""The trainer's tf.distribute strategy, shared by every step that fits a model (train,
and a tuning step's trials): a TPU when one is asked for or visible (never a silent
CPU run when one was asked for), MultiWorkerMirrored when TF_CONFIG names several
replicas, Mirrored on several GPUs, else the default; and which replica writes the
outputs (from TF_CONFIG alone, or from a strategy).
"""

from __future__ import annotations

import json
import os

from components.errors import TrainingError


# A TPU node is named by these (TPUClusterResolver reads them); a TPU VM needs none.
TPU_ENV = ("TPU_NAME", "TPU_CONFIG", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS")
# Set on a compiled train task that asked for an accelerator (kfp.steps.train).
ACCELERATOR_ENV = "IMGPIPE_ACCELERATOR"


def tpu_requested(strategy: str) -> bool:
    """A TPU was asked for: `train.strategy: tpu`, or the task's accelerator request."""
    return strategy == "tpu" or os.environ.get(ACCELERATOR_ENV, "").upper().startswith("TPU")


def gpu_requested() -> str | None:
    """The GPU the task asked for: ACCELERATOR_ENV naming an NVIDIA type (Vertex AI's
    names, NVIDIA_TESLA_T4 ...), else None."""
    kind = os.environ.get(ACCELERATOR_ENV, "")
    return kind if kind.upper().startswith("NVIDIA") else None


def _check_requested_gpu(tf) -> None:
    """A task that asked for a GPU and sees none fails here, as a TPU request does: the
    default strategy would train on the CPU of the machine the GPU was paid for."""
    gpu = gpu_requested()
    if not gpu or tf.config.list_physical_devices("GPU"):
        return
    why = ("this TensorFlow is built without CUDA (the CPU image?)"
           if not tf.test.is_built_with_cuda() else "no GPU device is visible (driver?)")
    raise TrainingError(f"{ACCELERATOR_ENV}={gpu} asked for a GPU, but TensorFlow sees none: "
                        f"{why}; run the step in kfp.gpu_image (deploy/Dockerfile.gpu) on a "
                        "machine with that GPU, or drop the step's accelerator_type.")


def _tpu_hardware_visible() -> bool:
    """Cheap signs of a TPU VM (device files libtpu opens), so that `auto` on a CPU or
    GPU machine does not try to initialize a TPU system."""
    import glob

    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def resolve_tpu():
    """A connected, initialized TPUClusterResolver: from TPU_NAME / TPU_CONFIG (a TPU
    node) when they are set, else `tpu="local"` (the TPU VM this runs on). Raises
    TrainingError with each attempt's reason."""
    import tensorflow as tf

    attempts = []
    if any(os.environ.get(name) for name in TPU_ENV):
        attempts.append(("TPU_NAME/TPU_CONFIG", {}))
    attempts.append(("this TPU VM (tpu='local')", {"tpu": "local"}))
    errors = []
    for label, kwargs in attempts:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(**kwargs)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return resolver, label
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
    raise TrainingError("no TPU resolves (" + "; ".join(errors) + ")")


def _tf_config() -> dict:
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError as exc:
        raise TrainingError(f"TF_CONFIG is not JSON ({exc}); it names the cluster's tasks.") \
            from exc
    return config if isinstance(config, dict) else {}


def cluster_size() -> int:
    """The training replicas TF_CONFIG names: its chief plus its workers. Vertex AI
    names the first worker pool `chief` and the others `worker`, so a 2-replica job is
    {"chief": [a], "worker": [b]}; plain TF_CONFIGs may have only workers."""
    cluster = _tf_config().get("cluster") or {}
    return len(cluster.get("chief") or []) + len(cluster.get("worker") or [])


def is_chief_task() -> bool:
    """Whether this process is the one that writes outputs, from TF_CONFIG alone (no
    TensorFlow import): true without TF_CONFIG or with one replica, for the `chief`
    task, and for worker 0 when there is no chief; false for the other workers and for
    evaluator/ps tasks."""
    config = _tf_config()
    cluster = config.get("cluster") or {}
    if cluster_size() <= 1:
        return True
    task = config.get("task") or {}
    return _writes_outputs(task.get("type"), int(task.get("index") or 0),
                           bool(cluster.get("chief")))


def _writes_outputs(task_type: str | None, task_id: int, has_chief: bool) -> bool:
    """The replica of a cluster that writes outputs: the chief, or worker 0 when the
    cluster has none."""
    return task_type == "chief" or (task_type == "worker" and not has_chief and task_id == 0)


def choose_strategy(name: str):
    """(strategy, reason). `auto`: a TPU when one is visible, MultiWorkerMirrored when
    TF_CONFIG names several workers, Mirrored on several GPUs, else the default. A TPU
    or a GPU that was asked for and is not there is an error, never a silent CPU run."""
    import tensorflow as tf

    _check_requested_gpu(tf)
    requested = tpu_requested(name)
    if requested or (name == "auto" and (any(os.environ.get(n) for n in TPU_ENV)
                                         or _tpu_hardware_visible())):
        try:
            resolver, where = resolve_tpu()
            return tf.distribute.TPUStrategy(resolver), f"TPU from {where}"
        except TrainingError as exc:
            if requested:
                raise TrainingError(
                    f"a TPU was requested (train.strategy {name!r}, "
                    f"{ACCELERATOR_ENV}={os.environ.get(ACCELERATOR_ENV, '')!r}) but {exc}; "
                    "run on a TPU VM or set TPU_NAME, or drop the TPU request.") from exc
    workers = cluster_size()
    if name == "multi_worker" or (name == "auto" and workers > 1):
        return (tf.distribute.MultiWorkerMirroredStrategy(),
                f"TF_CONFIG names {workers} workers (chief included)")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices), f"mirrored over {len(devices)} devices"
    if name == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"{len(gpus)} GPUs"
    where = "1 GPU" if gpus else "CPU"
    return tf.distribute.get_strategy(), f"default strategy on {where}"


def is_tpu(strategy) -> bool:
    return "TPU" in type(strategy).__name__


def is_chief(strategy) -> bool:
    """Whether this process writes the model: always, except on the non-chief workers
    of a multi-worker run (TF_CONFIG; the chief, or worker 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True
    return _writes_outputs(task_type, resolver.task_id,
                           "chief" in (resolver.cluster_spec().as_dict() or {}))


def is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def strategy_name(strategy) -> str:
    """The public name (MultiWorkerMirroredStrategy's class is CollectiveAllReduce...)."""
    return "MultiWorkerMirroredStrategy" if is_multi_worker(strategy) else \
        type(strategy).__name__.lstrip("_")
