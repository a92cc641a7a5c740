"""Distribution: how the trainer finds a TPU (and never falls back silently when one
was asked for), the TPU defaults under auto, and eval batches under many replicas."""

from __future__ import annotations

import pytest

from components import artifacts
from components.trainer import distribute, inputs, training
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.train import TrainConfig
from components.config.transform import TransformConfig
from components.errors import TrainingError
from components.steps import transform
from tests import fixtures


# TensorFlow runs here outside a step (which has a private temporary folder of its own)
pytestmark = pytest.mark.usefixtures("private_tmp")


class FakeResolver:
    calls: list = []
    works: set = set()

    def __init__(self, **kwargs):
        FakeResolver.calls.append(kwargs)
        self.kwargs = kwargs

    def master(self):
        return "grpc://tpu"


@pytest.fixture
def fake_tpu(monkeypatch):
    import tensorflow as tf

    FakeResolver.calls, FakeResolver.works = [], set()

    def initialize(resolver):
        key = "local" if resolver.kwargs.get("tpu") == "local" else "named"
        if key not in FakeResolver.works:
            raise tf.errors.NotFoundError(None, None, f"no TPU ({key})")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", FakeResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda resolver: None)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", initialize)
    monkeypatch.setattr(tf.distribute, "TPUStrategy",
                        type("TPUStrategy", (), {"__init__": lambda self, r: None,
                                                 "num_replicas_in_sync": 8}))
    for name in distribute.TPU_ENV + (distribute.ACCELERATOR_ENV,):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distribute, "_tpu_hardware_visible", lambda: False)
    return monkeypatch


def test_tpu_resolution_order(fake_tpu):
    fake_tpu.setenv("TPU_NAME", "my-tpu")
    FakeResolver.works = {"named"}
    strategy, reason = distribute.choose_strategy("auto")
    assert type(strategy).__name__ == "TPUStrategy" and "TPU_NAME" in reason
    assert FakeResolver.calls == [{}]                     # TPU_NAME first
    FakeResolver.calls, FakeResolver.works = [], {"local"}
    strategy, reason = distribute.choose_strategy("tpu")
    assert FakeResolver.calls == [{}, {"tpu": "local"}]   # then this TPU VM
    assert "tpu='local'" in reason


def test_a_requested_tpu_never_falls_back_silently(fake_tpu):
    with pytest.raises(TrainingError, match="a TPU was requested"):
        distribute.choose_strategy("tpu")
    fake_tpu.setenv(distribute.ACCELERATOR_ENV, "TPU_V5_LITEPOD")     # the KFP task asked
    with pytest.raises(TrainingError, match="TPU_V5_LITEPOD"):
        distribute.choose_strategy("auto")
    fake_tpu.delenv(distribute.ACCELERATOR_ENV)
    FakeResolver.calls = []
    strategy, reason = distribute.choose_strategy("auto")   # nothing asked, nothing visible
    assert "default strategy" in reason and FakeResolver.calls == []


def test_tpu_defaults_under_auto():
    tpu = type("TPUStrategy", (), {"num_replicas_in_sync": 8})()
    cpu = type("_DefaultDistributionStrategy", (), {"num_replicas_in_sync": 1})()
    on_tpu = training.plan_for(TrainConfig(), tpu)
    assert (on_tpu.policy, on_tpu.steps_per_execution, on_tpu.static) == \
        ("mixed_bfloat16", 32, True)
    assert "bfloat16" in on_tpu.notes and "static" in on_tpu.notes
    elsewhere = training.plan_for(TrainConfig(), cpu)
    assert (elsewhere.policy, elsewhere.steps_per_execution, elsewhere.static) == \
        ("float32", 8, False)
    explicit = training.plan_for(TrainConfig(mixed_precision="none", steps_per_execution=4), tpu)
    assert (explicit.policy, explicit.steps_per_execution) == ("float32", 4)


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("strategy")
    examples, _ = fixtures.examples_artifact(tmp, per_class=8)      # eval: 3 examples
    transform.run(examples, DataConfig(image_size=(12, 12)), TransformConfig(), BeamConfig(),
                  transform_graph=str(tmp / "tg"))
    return artifacts.read(str(tmp / "tg")), examples


def test_eval_under_many_replicas_is_padded_not_dropped(small_graph):
    import numpy as np

    graph, examples = small_graph
    cfg = TrainConfig(batch_size=8)
    # 8 replicas x 8 = a global batch of 64 for 3 eval examples: dropping the remainder
    # would leave no batch at all
    batches = list(inputs.make_dataset(graph, examples, "eval", 64, cfg, False, False,
                                       static=True))
    assert len(batches) == 1
    images, labels, weights = batches[0]
    assert images.shape[0] == 64 and float(np.sum(weights)) == 3.0
    assert np.allclose(labels.numpy()[weights.numpy() == 0], 0)
    plain = list(inputs.make_dataset(graph, examples, "eval", 64, cfg, False, False))
    assert len(plain) == 1 and plain[0][0].shape[0] == 3
    assert np.allclose(plain[0][0].numpy(), images.numpy()[:3])


def test_several_replicas_train_one_step_per_call_unless_told():
    mirrored = type("MirroredStrategy", (), {"num_replicas_in_sync": 2})()
    assert training.plan_for(TrainConfig(), mirrored).steps_per_execution == 1
    assert training.plan_for(TrainConfig(steps_per_execution=4), mirrored
                             ).steps_per_execution == 4


@pytest.mark.parametrize("cluster,task,chief", [
    ({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "chief", "index": 0}, True),
    ({"chief": ["a:1"], "worker": ["b:1"]}, {"type": "worker", "index": 0}, False),
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
    ({"chief": ["a:1"], "worker": ["b:1"], "evaluator": ["c:1"]}, {"type": "evaluator"}, False),
])
def test_vertex_tf_config_counts_the_chief_and_picks_multi_worker(monkeypatch, cluster, task,
                                                                  chief):
    """Vertex names workerpool0 `chief` and the rest `worker`: a chief and one worker
    are two replicas (MultiWorkerMirrored under auto), and only the chief writes."""
    import json

    import tensorflow as tf

    made = []
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy",
                        lambda: made.append(True) or "mwms")
    monkeypatch.setattr(distribute, "_tpu_hardware_visible", lambda: False)
    for name in distribute.TPU_ENV + (distribute.ACCELERATOR_ENV,):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert distribute.cluster_size() == 2
    assert distribute.is_chief_task() is chief
    strategy, reason = distribute.choose_strategy("auto")
    assert strategy == "mwms" and made and reason == "TF_CONFIG names 2 workers (chief included)"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["a:1"]},
                                                "task": {"type": "chief", "index": 0}}))
    assert distribute.cluster_size() == 1 and distribute.is_chief_task()
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.cluster_size() == 0 and distribute.is_chief_task()
