"""The step contract: declarations agree with the functions, the DAG's wiring is
checked, each step receives only the config it reads, and the layout tells steps
from helpers."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
from typing import Any

import pytest

from components import artifacts
from components.config.beam import BeamConfig
from components.config.data import DataConfig
from components.config.train import TrainConfig
from components.contract import (BASELINE_MODEL, BaselineModel, In, Maybe, Out, Scratch,
                                 Summary, section_problems, spec_of, step)
from components.errors import ValidationFailed
from pipeline import cache, dag, invoke
from pipeline import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_step_reads_config_sections_the_root_config_has():
    sections = config_lib.section_types()
    for node in dag.STEPS:
        assert section_problems(node.spec, sections) == [], node.name
        assert node.spec.outputs, node.name


def test_the_signature_is_the_contract():
    def external(data):
        return {}

    @step(name="whole", external=external, beam=("runner",))
    def whole(examples: In[artifacts.Examples], data: DataConfig, beam: BeamConfig,
              model: Out[artifacts.Model], baseline: BaselineModel = None,
              before: In[artifacts.ExampleStatistics] | None = None, scratch: Scratch = None):
        return {}

    spec = spec_of(whole)
    assert dict(spec.inputs) == {"examples": artifacts.Examples,
                                 "before": Maybe(artifacts.ExampleStatistics)}
    assert dict(spec.outputs) == {"model": artifacts.Model}
    assert spec.config == ("data",) and spec.beam == ("runner",)
    assert dict(spec.resolved) == {"baseline": BASELINE_MODEL}
    assert spec.scratch == "scratch" and spec.external is external
    # the module's own name is the default step name
    assert step(beam=("runner",))(whole.__wrapped__).spec.name == "test_contract"


@pytest.mark.parametrize("make, message", [
    (lambda: step(name="b")(lambda x, model: None), "has no annotation"),
    (lambda: _declare("def f(x: str, model: Out[artifacts.Model]): ..."),
     "parameter 'x' is annotated <class 'str'>, which the runner cannot pass"),
    (lambda: _declare("def f(x: In[int], model: Out[artifacts.Model]): ..."),
     "is not an artifact type"),
    (lambda: _declare("def f(before: In[artifacts.Examples] | None, "
                      "model: Out[artifacts.Model]): ..."),
     "optional input 'before' needs a default of None"),
    (lambda: _declare("def f(model: Out[artifacts.Model] | None = None): ..."),
     "output 'model' cannot be optional"),
    (lambda: _declare("def f(data: DataConfig, model: Out[artifacts.Model]): ...",
                      beam=("runner",)), "declares beam keys but takes no beam"),
    (lambda: _declare("def f(beam: BeamConfig, model: Out[artifacts.Model]): ..."),
     "declares no beam keys"),
    (lambda: _declare("def f(data: DataConfig): ..."), "at least one artifact"),
    (lambda: _declare("def f(data: DataConfig, model: Out[artifacts.Model]): ...",
                      record=("data",), cache=False), "go together"),
    (lambda: _declare("def f(data: DataConfig, model: Out[artifacts.Model]): ...",
                      external=lambda data, schema: {}), "external inputs function takes 'schema'"),
])
def test_a_signature_the_runner_cannot_serve_fails_at_import(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def _declare(source: str, **keywords: Any):
    namespace = {"In": In, "Out": Out, "artifacts": artifacts, "DataConfig": DataConfig,
                 "BeamConfig": BeamConfig, "Summary": Summary, "_Judged": _Judged,
                 "_Counted": _Counted}
    exec(source, namespace)
    return step(name="f", **keywords)(namespace["f"])


class _Judged(Summary):
    blessed: bool
    reason: str


class _Counted(Summary):
    blessed: int
    reason: str


@pytest.mark.parametrize("result, keywords, message", [
    ("dict", {"gate": "blessed"}, "its gate reads field 'blessed', which its result type "
                                  "'dict' lacks"),
    ("Summary", {"gate": "blessed"}, "its gate reads field 'blessed', which its result type "
                                     "'Summary' lacks"),
    ("_Judged", {"gate": "passed"}, "its gate reads field 'passed'"),
    ("_Counted", {"gate": "blessed"}, "its gate field 'blessed' must be a bool"),
    ("_Judged", {"stop": ValidationFailed}, "declare gate= too"),
    ("_Judged", {"gate": "blessed", "stop": "stop"}, "stop= takes an exception class"),
    ("_Judged", {"delivers": True}, "delivers=True reads field 'pushed'"),
    ("_Judged", {"shows": ("accuracy",)}, "shows= reads field 'accuracy'"),
    ("_Judged", {"check": lambda data, schema: []}, "check function takes 'schema'"),
])
def test_a_gate_and_what_the_summary_reads_are_checked_against_the_result_type(
        result, keywords, message):
    """The result is a declared type: a gate, a delivery or a shown field that it does
    not declare is a TypeError when the step's module is imported."""
    with pytest.raises(TypeError, match=message):
        _declare(f"def f(data: DataConfig, model: Out[artifacts.Model]) -> {result}: ...",
                 **keywords)


def test_a_gate_declared_on_its_result_type():
    step_fn = _declare("def f(data: DataConfig, model: Out[artifacts.Model]) -> _Judged: ...",
                       gate="blessed", closed="not blessed", stop=ValidationFailed,
                       check=lambda data, where: [])
    spec = spec_of(step_fn)
    assert spec.result is _Judged and spec.closed_words().word == "not blessed"
    assert spec.gate_open({"blessed": True}) and not spec.gate_open({"blessed": False})
    assert spec.stop_error({"blessed": True}) is None
    error = spec.stop_error({"blessed": False, "reason": "2 anomalies stop the run"})
    assert isinstance(error, ValidationFailed) and str(error) == "2 anomalies stop the run"
    # the real gating steps declare theirs; a stop gate holds no step back under dsl.If
    assert [(n.name, n.spec.gate) for n in dag.STEPS if n.spec.gate] == [
        ("validate", "passed"), ("evaluate", "blessed"), ("infra_validate", "passed")]
    assert dag.gates_of(dag.get("transform")) == []
    assert dag.gates_of(dag.get("push")) == ["evaluate", "infra_validate"]
    assert [n.name for n in dag.STEPS if n.spec.delivers] == ["push"]


def test_section_names_and_types_are_checked_against_the_root_config():
    @step(name="odd")
    def odd(data: TrainConfig, nosuch: TrainConfig, model: Out[artifacts.Model]):
        return {}

    problems = "\n".join(section_problems(spec_of(odd), config_lib.section_types()))
    assert "config 'data' should be annotated DataConfig, is TrainConfig" in problems
    assert "config section 'nosuch', which does not exist" in problems
    with pytest.raises(TypeError, match="nosuch"):
        dag.check((dag.node(odd),))


def test_wiring_is_checked_against_declared_types():
    @step(name="make")
    def make(statistics: Out[artifacts.ExampleStatistics]):
        return {}

    @step(name="use")
    def use(examples: In[artifacts.Examples], old: In[artifacts.Examples],
            model: Out[artifacts.Model]):
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


def test_output_references_are_checked_where_they_are_made():
    evaluation = dag.ref("evaluate", "evaluation")
    assert str(evaluation) == "evaluate.evaluation" and evaluation.type == "ModelEvaluation"
    assert evaluation.uri({"evaluate.evaluation": "/e"}) == "/e"
    assert evaluation.uri({}) is None          # not produced in this run
    with pytest.raises(KeyError, match="no output 'evalution'"):
        dag.ref("evaluate", "evalution")
    with pytest.raises(KeyError, match="no step 'evaluation'"):
        dag.ref("evaluation", "evaluation")


def test_each_step_receives_only_the_config_it_reads(make_config):
    cfg = make_config(name="fonts", evaluate={"thresholds": {"accuracy": {"min": 0.7}}},
                      infra_validate={"latency_budget_ms": 500})
    by_name = {node.name: invoke.step_config(node, cfg) for node in dag.STEPS}
    assert set(by_name["ingest"]) == {"data", "ingest", "beam"}
    # data: validation_fraction (the validation split train carves from the train split)
    assert set(by_name["train"]) == {"model", "train", "data"}
    assert set(by_name["infra_validate"]) == {"infra_validate"}
    assert set(by_name["evaluate"]) == {"evaluate", "beam"}
    # push reads its own section (model name filled in) and records what made the model
    assert set(by_name["push"]) == {"push", "record"}
    assert by_name["push"]["push"]["model_name"] == "fonts"
    assert set(by_name["push"]["record"]) == {"data", "transform", "model", "train", "evaluate"}
    # the cache key takes only the beam keys that change results
    ingest = dag.get("ingest")
    assert invoke.keyed_config(ingest, by_name["ingest"])["beam"] == {"runner": "DirectRunner"}


def test_call_hands_open_writers_and_commits_them(tmp_path, make_config):
    seen = {}

    @step(name="spy")
    def spy(examples: In[artifacts.Examples], data: DataConfig,
            statistics: Out[artifacts.ExampleStatistics],
            before: In[artifacts.ExampleStatistics] | None = None, scratch: Scratch = None):
        seen.update(examples=examples, data=data, writer=statistics, before=before,
                    scratch=scratch)
        if os.environ.get("SPY_FAILS"):
            with open(statistics.file("half"), "w") as handle:
                handle.write("half")
            raise RuntimeError("spy crashed")
        artifacts.ExampleStatistics.write(statistics, {"n": 1})
        statistics.properties = {"n": 1}
        return {"lines": []}

    node = dag.node(spy, examples="x.examples")
    cfg = make_config(data={"source": "builtin:digits"})
    context = invoke.Context.from_config(cfg)
    resolved = invoke.resolve(node, invoke.StepSections.of(node, cfg), context)
    examples = artifacts.Artifact(uri="/e", type="Examples", fingerprint="f")
    out, scratch = str(tmp_path / "out"), tmp_path / "scratch"
    scratch.mkdir()
    invoke.call(node, resolved, {"examples": examples}, {"statistics": out}, {"run_id": "r"},
                scratch=str(scratch))
    assert seen["examples"] is examples and seen["data"] == cfg.data
    assert seen["before"] is None and seen["scratch"] == str(scratch)
    writer = seen["writer"]
    assert isinstance(writer, artifacts.ArtifactWriter) and writer.uri == out
    committed = artifacts.read(out, artifacts.ExampleStatistics)
    assert committed.producer == {"run_id": "r"} and committed.properties == {"n": 1}
    assert artifacts.ExampleStatistics.read(committed) == {"n": 1}
    assert not scratch.exists()       # removed once the outputs are committed
    with pytest.raises(Exception, match="lacks its input"):
        invoke.call(node, resolved, {}, {"statistics": out}, {})


def test_a_failing_step_leaves_no_artifact_and_keeps_its_scratch(tmp_path, make_config,
                                                                 monkeypatch):
    @step(name="spy")
    def spy(data: DataConfig, statistics: Out[artifacts.ExampleStatistics],
            scratch: Scratch = None):
        with open(statistics.file("half"), "w") as handle:
            handle.write("half")
        raise RuntimeError("spy crashed")

    node = dag.node(spy)
    cfg = make_config(data={"source": "builtin:digits"})
    resolved = invoke.resolve(node, invoke.StepSections.of(node, cfg), None)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(RuntimeError, match="spy crashed"):
        invoke.call(node, resolved, {}, {"statistics": str(out)}, {}, scratch=str(scratch))
    assert not out.exists() and not list(tmp_path.glob("out.staging-*"))
    assert scratch.exists()


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


def _is_kfp(module: str) -> bool:
    return module == "pipeline.kfp" or module.startswith("pipeline.kfp.")


def test_the_runners_are_peers():
    """The KFP adapter (every module of pipeline/kfp/) and the registry views import no
    runner; the local runner imports no part of the KFP adapter. Both call steps through
    pipeline.invoke. What the step containers import (pipeline.kfp.entrypoint) loads
    neither the compile-time code nor the kfp.local driver, and the package itself
    imports none of its modules."""
    kfp_modules = _modules_under("pipeline.kfp")
    assert {"pipeline.kfp.compile", "pipeline.kfp.entrypoint",
            "pipeline.kfp.local"} <= set(kfp_modules)
    for module in ["pipeline.kfp", *kfp_modules]:
        assert "pipeline.local.runner" not in cache.code_modules(module), module
    for module in ("pipeline.kfp.compile", "pipeline.kfp.entrypoint", "pipeline.kfp.local"):
        assert "pipeline.invoke" in cache.code_modules(module), module
    entry_deps = cache.code_modules("pipeline.kfp.entrypoint")
    assert not {"pipeline.kfp.compile", "pipeline.kfp.local"} & set(entry_deps)
    assert [d for d in cache.code_modules("pipeline.kfp") if _is_kfp(d)] == ["pipeline.kfp"]
    local_deps = cache.code_modules("pipeline.local.runner")
    assert not [d for d in local_deps if _is_kfp(d)] and "pipeline.invoke" in local_deps
    registry_deps = cache.code_modules("pipeline.registry_views")
    assert "pipeline.local.runner" not in registry_deps
    assert not [d for d in registry_deps if _is_kfp(d)]


def test_until_offers_exactly_the_dags_steps(capsys, tmp_path):
    from pipeline import cli

    until = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices[
        "run"]._actions if a.dest == "until")
    assert ", ".join(dag.names()) in until.help
    # the runner checks the name against the DAG it runs (a --dag has steps of its own)
    assert cli.main(["run", os.path.join(ROOT, "configs", "digits.yaml"), "--until",
                     "trian", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "--until 'trian' is not a step; steps are ingest, validate" in capsys.readouterr().err


def _own_imports(module: str) -> set[str]:
    """What the module's own file imports, anywhere in it (inside functions too)."""
    with open(os.path.join(ROOT, *module.split(".")) + ".py") as handle:
        tree = ast.parse(handle.read())
    found = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            found.update(alias.name for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.module:
            found.add(item.module)
            found.update(f"{item.module}.{alias.name}" for alias in item.names)
    return found


def test_the_cli_command_groups_are_peers():
    """Each command group of pipeline/cli/ imports the shared helpers (common), never
    another group, the dispatcher or the exit codes; common and exits import no part of
    the CLI. Building the parser loads neither TensorFlow, Beam nor KFP: the handlers
    import them when they run."""
    import subprocess
    import sys

    groups = {"pipeline.cli.run", "pipeline.cli.models", "pipeline.cli.runs",
              "pipeline.cli.tools", "pipeline.cli.backfill", "pipeline.cli.serving",
              "pipeline.cli.serving_config", "pipeline.cli.monitoring", "pipeline.cli.canary",
              "pipeline.cli.ui"}
    modules = set(_modules_under("pipeline.cli")) - {"pipeline.cli.__main__"}
    assert modules == groups | {"pipeline.cli.common", "pipeline.cli.exits"}
    for module in modules:
        cli_deps = (_own_imports(module) & modules) | (_own_imports(module) & {"pipeline.cli"})
        assert cli_deps <= ({"pipeline.cli.common"} if module in groups else set()), module
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys; from pipeline import cli; cli.build_parser(); "
         "print(sorted(m for m in ('tensorflow', 'apache_beam', 'kfp') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stderr


# --- the architecture: no import cycle, small modules, each layer's imports -----------

MAX_LINES = 600             # a module over this is split along its concerns
MAX_TOP_MODULES = 15        # components/ top: the types every layer shares, no more
# What each package of components/ may import of the project besides itself (the design's
# layout table): "top" is components/'s own modules (artifacts, contract, errors,
# runtime, features). Steps may import every package but steps (another step: above).
LAYERS = {"config": {"top"}, "io": {"top", "config"},
          "data": {"top", "config", "io"}, "trainer": {"top", "config", "data", "io"},
          "evaluation": {"top", "config", "data", "io"},
          "inference": {"top", "config", "data", "io"},
          "registry": {"top", "config", "io"}, "integrations": {"top", "config", "io"},
          "steps": {"top", "config", "io", "data", "trainer", "evaluation", "inference",
                    "registry", "integrations"}}
# Narrower still: the config sections import the standard library, pydantic, each
# other and the error hierarchy; a source pattern is checked by data.spans, imported
# inside config.data's `checked_pattern`, which infer's source uses too (spans imports no config).
# components/io reads and writes storage for every layer: errors, runtime and the Beam
# section only.
CONFIG_TOP = {"components.errors"}
CONFIG_LAZY = {"components.config.data": {"components.data", "components.data.spans"}}
IO_TOP = {"components.errors", "components.runtime"}


def _project_modules() -> dict[str, str]:
    """module -> its file, for every module of components/ and pipeline/ (a package as
    its __init__.py), found on disk."""
    found = {}
    for top in ("components", "pipeline"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            package = os.path.relpath(folder, ROOT).replace(os.sep, ".")
            for file in sorted(f for f in files if f.endswith(".py")):
                name = package if file == "__init__.py" else f"{package}.{file[:-3]}"
                found[name] = os.path.join(folder, file)
    return found


def _import_graph(modules: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (inside functions
    and under TYPE_CHECKING too), as the cache's code key reads them."""
    modules = _project_modules() if modules is None else modules
    return {name: set(cache._file_info(name)[1]) & set(modules) - {name} for name in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph`: its strongly connected components of more than one
    module (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in graph:
                    continue
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def test_no_import_cycle_among_project_modules():
    """No two modules of components/ or pipeline/ import each other, directly or round
    a loop, counting the imports inside functions and under TYPE_CHECKING: a lower
    layer that reached back up would make every edit to it a rebuild of both."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    cycles = _cycles(_import_graph())
    assert cycles == [], "import cycles among: " + "; ".join(
        "{" + ", ".join(cycle) + "}" for cycle in cycles)


def test_no_module_of_components_or_pipeline_is_over_600_lines():
    long = {}
    for name, path in _project_modules().items():
        with open(path, encoding="utf-8") as handle:
            count = len(handle.read().splitlines())
        if count > MAX_LINES:
            long[name] = count
    assert long == {}, f"over {MAX_LINES} lines, split them along their concerns: {long}"


def test_components_top_holds_the_shared_types_only():
    top = [name for name in _modules_under("components")
           if not os.path.isdir(os.path.join(ROOT, "components", name.rsplit(".", 1)[1]))]
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules at components/ top: {top}"


def _package_of(module: str) -> str | None:
    """The components/ package a module belongs to ('top' for components/'s own
    modules, None outside components/)."""
    parts = module.split(".")
    if parts[0] != "components":
        return None
    if len(parts) > 1 and os.path.isdir(os.path.join(ROOT, "components", parts[1])):
        return parts[1]
    return "top"


def _lazy_imports(path: str) -> set[str]:
    """What a file imports inside functions only (never at module level)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    in_functions = {id(item) for node in ast.walk(tree)
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for item in ast.walk(node) if isinstance(item, (ast.Import, ast.ImportFrom))}
    inner: set[str] = set()
    outer: set[str] = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            names = {alias.name for alias in item.names}
        elif isinstance(item, ast.ImportFrom) and item.module:
            names = {item.module} | {f"{item.module}.{alias.name}" for alias in item.names}
        else:
            continue
        (inner if id(item) in in_functions else outer).update(names)
    return inner - outer


def test_each_components_package_imports_only_the_layers_below():
    """components/ never imports pipeline/; each package imports what the layout table
    lets it (LAYERS); config sections only the standard library, pydantic, each other
    and errors (data.spans lazily, for the two source patterns); io only errors,
    runtime and config."""
    import sys

    modules = _project_modules()
    wrong = []
    for name, deps in _import_graph(modules).items():
        package = _package_of(name)
        if package is None:
            continue
        if package == "top":
            wrong += [f"{name} -> {d}" for d in deps if d.startswith("pipeline")]
            continue
        lazy = _lazy_imports(modules[name])
        for dep in sorted(deps):
            layer = _package_of(dep)
            if dep == "components" or layer == package:
                continue
            if package == "config":
                allowed = dep in CONFIG_TOP or (dep in CONFIG_LAZY.get(name, set())
                                                and dep in lazy)
            elif package == "io":
                allowed = dep in IO_TOP or layer == "config"
            else:
                allowed = layer in LAYERS[package]
            if not allowed:
                wrong.append(f"{name} -> {dep}")
    for name, path in modules.items():       # and outside the project: pydantic only
        if _package_of(name) != "config":
            continue
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for item in ast.walk(tree):
            tops = ({alias.name.split(".")[0] for alias in item.names}
                    if isinstance(item, ast.Import) else
                    {item.module.split(".")[0]} if isinstance(item, ast.ImportFrom)
                    and item.module and not item.level else set())
            wrong += [f"{name} -> {top}" for top in tops
                      if top not in sys.stdlib_module_names
                      and top not in ("__future__", "pydantic", "components")]
    assert set(LAYERS) == {_package_of(n) for n in modules} - {"top", None}
    assert wrong == [], "imports across the layers: " + "; ".join(wrong)


# The web console (pipeline/ui/) is a front end like the CLI: it reads the runs folder,
# the registry, the request log and the report, and moves aliases only through the CLI's
# shared audited functions (pipeline.cli.common). Only the `ui` command imports it.
UI_MAY_IMPORT = ("pipeline.ui", "pipeline.metadata", "pipeline.registry_views",
                 "pipeline.results", "pipeline.serve.monitoring", "pipeline.serve.canary",
                 "pipeline.serve.request_log", "pipeline.cli.common", "pipeline.report",
                 "pipeline.config_yaml", "components")
# packages named by `from pipeline.serve import canary`: their __init__ runs anyway
UI_PACKAGES = {"pipeline", "pipeline.serve"}


def test_the_console_is_a_leaf_front_end():
    modules = _project_modules()
    graph = _import_graph(modules)
    ui = {name for name in modules if name == "pipeline.ui" or name.startswith("pipeline.ui.")}
    assert {"pipeline.ui.app", "pipeline.ui.security"} <= ui
    importers = {name for name, deps in graph.items() if deps & ui} - ui
    assert importers == {"pipeline.cli.ui"}, importers
    wrong = [f"{name} -> {dep}" for name in sorted(ui) for dep in sorted(graph[name])
             if dep not in UI_PACKAGES and not any(dep == allowed or dep.startswith(allowed + ".")
                        for allowed in UI_MAY_IMPORT)]
    assert wrong == [], "the console imports beyond its layer: " + "; ".join(wrong)


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


def _artifact_file_names() -> set[str]:
    """Every file or folder name the built-in artifact types define, but for the
    plain words that are also parameter and config names elsewhere."""
    names = {name for cls in artifacts.TYPES.values()
             if cls.__module__ == artifacts.__name__ for name in cls.file_names()}
    # "tfma" is also the name of a metric's source in a blessing's checks
    return names - {"examples", "logs", "tfma"} | {artifacts.MANIFEST_NAME}


def test_no_artifact_file_name_is_spelled_outside_its_type():
    """Artifact types own their layout (a pushed version's model card and warmup records
    too: PushedModel): a file name appears as a literal only in
    components/artifacts.py; everyone else (steps, runners, the report, the CLI, the
    benches and these tests) goes through the type's constant or reader."""
    import ast

    names = _artifact_file_names()
    # the scan looks for the names that matter (spelled here by their constants: a
    # literal would be a hit of this very scan)
    key_names = (artifacts.ExampleStatistics.FILE, artifacts.ModelEvaluation.FILE,
                 artifacts.ModelBlessing.FILE, artifacts.Model.SAVED_MODEL,
                 artifacts.PushedModel.CARD, artifacts.PushedModel.WARMUP)
    assert all(isinstance(name, str) and name for name in key_names)
    assert len(set(key_names)) == len(key_names) and set(key_names) <= names
    found = []
    for folder in ("components", "pipeline", "bench", "tests"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                path = os.path.join(base, file)
                if not file.endswith(".py") or path.endswith(os.path.join("components",
                                                                          "artifacts.py")):
                    continue
                for node in ast.walk(ast.parse(open(path).read())):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str):
                        value = node.value
                        if any(value == n or value.startswith(n + "/") for n in names):
                            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} "
                                         f"{value!r}")
    assert found == [], "\n".join(found)
