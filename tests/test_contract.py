"""The step contract: declarations agree with the functions, the DAG's wiring is
checked, each step receives only the config it reads, and the layout tells steps
from helpers."""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any

import pytest

from components import artifacts
from components.config import DataConfig, TrainConfig
from components.contract import Maybe, check_signature, spec_of, step
from pipeline import cache, dag, invoke
from pipeline import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_step_declaration_agrees_with_its_function():
    sections = config_lib.section_types()
    for node in dag.STEPS:
        assert check_signature(node.spec, sections) == [], node.name


def test_a_disagreeing_declaration_is_reported():
    def external(data, schema):
        return {}

    @step(name="broken", inputs={"examples": artifacts.Examples, "gone": artifacts.Examples,
                                 "before": Maybe(artifacts.ExampleStatistics)},
          outputs={"model": artifacts.Model}, config=("data", "train", "nosuch"),
          external=external)
    def broken(examples: artifacts.Artifact, before: artifacts.Artifact, data: TrainConfig,
               train: TrainConfig, model: int, extra: str, quiet: artifacts.Artifact = None,
               producer: Any = None):
        return {}

    problems = "\n".join(check_signature(spec_of(broken), config_lib.section_types()))
    assert "declared input 'gone' is not a parameter" in problems
    assert "parameter 'extra' is not declared" in problems
    assert "parameter 'quiet' is not declared" in problems     # a default hides nothing
    assert "external inputs function takes 'schema'" in problems
    assert "optional input 'before' needs a default of None" in problems
    assert "config 'data' should be annotated DataConfig" in problems
    assert "output 'model' should be annotated str" in problems
    assert "config section 'nosuch', which does not exist" in problems
    assert "'nosuch' is not a parameter" in problems


def test_wiring_is_checked_against_declared_types():
    @step(name="make", outputs={"statistics": artifacts.ExampleStatistics})
    def make(statistics: str, producer: Any = None):
        return {}

    @step(name="use", inputs={"examples": artifacts.Examples, "old": artifacts.Examples},
          outputs={"model": artifacts.Model})
    def use(examples: artifacts.Artifact, old: artifacts.Artifact, model: str,
            producer: Any = None):
        return {}

    problems = dag.wiring_problems((
        dag.node(make),
        dag.node(use, examples="make.statistics", previous={"old": "make.nothing"}),
    ))
    text = "\n".join(problems)
    assert "use: examples expects Examples, make.statistics is ExampleStatistics" in text
    assert "use: old <- 'make.nothing' names no output of an earlier step" in text
    assert "'old' comes from an earlier run, which may not exist" in text
    assert dag.wiring_problems((dag.node(use),)) == [
        "use: input 'examples' is not wired", "use: input 'old' is not wired"]


def test_each_step_receives_only_the_config_it_reads(make_config):
    cfg = make_config(name="fonts", evaluate={"thresholds": {"accuracy": {"min": 0.7}}},
                      infra_validate={"latency_budget_ms": 500})
    by_name = {node.name: invoke.step_config(node, cfg) for node in dag.STEPS}
    assert set(by_name["ingest"]) == {"data", "ingest", "beam"}
    assert set(by_name["train"]) == {"model", "train"}
    assert set(by_name["infra_validate"]) == {"infra_validate"}
    assert set(by_name["evaluate"]) == {"evaluate", "beam"}
    # push reads its own section (model name filled in) and records what made the model
    assert set(by_name["push"]) == {"push", "record"}
    assert by_name["push"]["push"]["model_name"] == "fonts"
    assert set(by_name["push"]["record"]) == {"data", "transform", "model", "train", "evaluate"}
    # the cache key takes only the beam keys that change results
    ingest = dag.get("ingest")
    assert invoke.keyed_config(ingest, by_name["ingest"])["beam"] == {"runner": "DirectRunner"}


def test_call_passes_exactly_the_declared_parameters(tmp_path, make_config):
    seen = {}

    @step(name="spy", inputs={"examples": artifacts.Examples,
                              "before": Maybe(artifacts.ExampleStatistics)},
          outputs={"statistics": artifacts.ExampleStatistics}, config=("data",), scratch=True)
    def spy(examples: artifacts.Artifact, data: DataConfig, statistics: str,
            before: artifacts.Artifact | None = None, scratch: str | None = None,
            producer: Any = None):
        seen.update(examples=examples, data=data, statistics=statistics, before=before,
                    scratch=scratch, producer=producer)
        return {"lines": []}

    node = dag.node(spy, examples="x.examples")
    cfg = make_config(data={"source": "builtin:digits"})
    context = invoke.Context.from_config(cfg)
    resolved = invoke.resolve(node, invoke.step_config(node, cfg), context)
    examples = artifacts.Artifact(uri="/e", type="Examples", fingerprint="f")
    invoke.call(node, resolved, {"examples": examples}, {"statistics": "/out"}, {"run_id": "r"},
                scratch="/s")
    assert seen == {"examples": examples, "data": cfg.data, "statistics": "/out",
                    "before": None, "scratch": "/s", "producer": {"run_id": "r"}}
    with pytest.raises(Exception, match="lacks its input"):
        invoke.call(node, resolved, {}, {"statistics": "/out"}, {})


def _modules_under(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    return [f"{package}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)]


def test_layout_steps_live_apart_from_helpers_and_are_named_as_the_dag_names_them():
    step_modules = _modules_under("components.steps")
    assert sorted(m.rsplit(".", 1)[1] for m in step_modules) == sorted(dag.names())
    for node in dag.STEPS:
        assert node.spec.module == f"components.steps.{node.name}"
        # a step imports helpers, never another step or the orchestrator
        deps = cache.code_modules(node.spec.module)
        assert not [d for d in deps if d.startswith("pipeline")], node.name
        others = [d for d in deps if d.startswith("components.steps.")
                  and d != node.spec.module]
        assert others == [], node.name
    for module in _modules_under("components"):
        if module == "components.steps":
            continue
        declared = [v for v in vars(importlib.import_module(module)).values()
                    if callable(v) and hasattr(v, "spec")
                    and getattr(v, "__module__", "") == module]
        assert declared == [], f"{module} declares a step outside components/steps"


def test_the_runners_are_peers():
    """The KFP adapter and the registry views import no runner; the local runner does
    not import the KFP adapter. Both call steps through pipeline.invoke."""
    kfp_deps = cache.code_modules("pipeline.kfp")
    assert "pipeline.local" not in kfp_deps and "pipeline.invoke" in kfp_deps
    local_deps = cache.code_modules("pipeline.local")
    assert "pipeline.kfp" not in local_deps and "pipeline.invoke" in local_deps
    registry_deps = cache.code_modules("pipeline.registry")
    assert not {"pipeline.local", "pipeline.kfp"} & set(registry_deps)


def test_until_offers_exactly_the_dags_steps():
    from pipeline import cli

    until = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices[
        "run"]._actions if a.dest == "until")
    assert list(until.choices) == dag.names() and ", ".join(dag.names()) in until.help


FILTER_CHILD = r"""
import os, sys
from components import runtime
with runtime.filtered_native_stderr():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1795619253.531391   22700 cudart_stub.cc:31] Could not find cuda drivers\n")
    os.write(2, b"E0000 00:00:1795619273.714808   22744 cuda_platform.cc:52] failed call to cuInit\n")
    os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.\n")
    print("imgpipe: error: a real message", file=sys.stderr)
    os.write(2, b"E0000 00:00:1 123 saved_model.cc:9] a real TensorFlow error\n")
"""


def test_native_startup_notices_are_filtered_and_nothing_else():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", FILTER_CHILD], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["imgpipe: error: a real message",
                                       "E0000 00:00:1 123 saved_model.cc:9] a real TensorFlow error"]


def test_a_tensorflow_command_prints_nothing_on_stderr():
    """The real command line, TensorFlow loaded: no absl, CUDA or oneDNN start-up lines."""
    import subprocess
    import sys

    imgpipe = os.path.join(os.path.dirname(sys.executable), "imgpipe")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                            "CUDA_VISIBLE_DEVICES")}
    out = subprocess.run([imgpipe, "summary", "--model", "dense", "--input-shape", "8,8,1",
                          "--classes", "3"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0 and "Trainable params" in out.stdout
    assert out.stderr == ""
