"""The step contract: what a DAG step declares about itself, next to its function.

A step is a plain function in `components/steps/`. The `@step(...)` decorator attaches
a `StepSpec` to it: the artifacts it consumes and produces (with their types), the
config sections it reads, the Beam options that change its output, what the runner
resolves for it (the registry baseline, a scratch directory), whether its result may
be reused from a cache, and the summary key that gates later steps. `pipeline/dag.py`
wires the specs together with real imports; `pipeline/invoke.py` is the one place that
turns a spec + config + input artifacts into a call. `check_signature` holds the
declaration and the function's signature together (a test runs it on every step).

    @step(name="validate", inputs={"statistics": ExampleStatistics,
                                   "baseline_statistics": Maybe(ExampleStatistics)},
          outputs={"anomalies": ExampleAnomalies, "schema": Schema}, config=("validate",))
    def run(statistics, baseline_statistics, validate, anomalies, schema, producer): ...
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from components import artifacts, runtime

# What the runner can resolve for a step, by parameter meaning.
BASELINE_MODEL = "baseline_model"   # dir of the registry version holding push.baseline_alias
RESOLVABLE = (BASELINE_MODEL,)

# Parameters every step function takes, whatever it declares.
PRODUCER = "producer"


@dataclass(frozen=True)
class Maybe:
    """An input that may be absent (None), e.g. the previous run's statistics."""

    type: type


@dataclass(frozen=True)
class StepSpec:
    """A DAG step's interface. Field by field:

    inputs:   parameter -> artifact type (or `Maybe(type)`): committed artifacts the
              step reads; the DAG says which step (or earlier run) produces each.
    outputs:  parameter -> artifact type: the step receives a URI for each and must
              commit an artifact of that type there.
    config:   config sections passed as parameters of the same name (their values
              are in the cache key; the step receives nothing else of the config).
    record:   sections the step only records (the model card), passed together as
              `recorded_config`; never in a cache key (such steps are not cached).
    beam:     keys of the `beam` section that change the output; a Beam step
              (non-empty) receives the whole section as `beam`.
    resolved: parameter -> what the runner resolves (BASELINE_MODEL).
    scratch:  the step takes `scratch`, a directory that survives a failed attempt
              (checkpoints), private to the execution.
    cache:    False for steps with effects outside their artifacts (push).
    gate:     summary key whose truth lets the push run (blessed, passed).
    isolated: the step's work runs in a child process (infra validation's fresh
              TensorFlow), so the local runner may run it beside the next steps.
    external: f(**config sections) -> {name: fingerprint} of files the step reads
              that no step produces (the data source, a schema file, start weights).
    """

    name: str
    fn: Callable[..., Any]
    outputs: Mapping[str, type]
    inputs: Mapping[str, type | Maybe] = field(default_factory=dict)
    config: tuple[str, ...] = ()
    record: tuple[str, ...] = ()
    beam: tuple[str, ...] = ()
    resolved: Mapping[str, str] = field(default_factory=dict)
    scratch: bool = False
    cache: bool = True
    gate: str | None = None
    isolated: bool = False
    external: Callable[..., dict[str, str]] | None = None

    @property
    def module(self) -> str:
        return self.fn.__module__

    def input_type(self, param: str) -> str:
        kind = self.inputs[param]
        return (kind.type if isinstance(kind, Maybe) else kind).__name__

    def is_optional(self, param: str) -> bool:
        return isinstance(self.inputs[param], Maybe)

    def output_type(self, param: str) -> str:
        return self.outputs[param].__name__


def step(name: str, **declaration: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declares the decorated function a DAG step (see `StepSpec`). A step runs with
    a private temporary folder, removed when it returns or fails (TensorFlow, Beam and
    tensorflow-transform leave files in the temporary folder otherwise)."""

    def attach(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run_step(*args: Any, **kwargs: Any) -> Any:
            with runtime.private_tempdir():
                return fn(*args, **kwargs)

        run_step.spec = StepSpec(name=name, fn=run_step, **declaration)  # type: ignore[attr-defined]
        return run_step

    return attach


def spec_of(fn: Callable[..., Any]) -> StepSpec:
    spec = getattr(fn, "spec", None)
    if not isinstance(spec, StepSpec):
        raise TypeError(f"{fn.__module__}.{fn.__name__} is not declared with @step(...).")
    return spec


def expected_parameters(spec: StepSpec) -> dict[str, str]:
    """Every parameter the runner passes, with the role it plays."""
    out = {p: "input" for p in spec.inputs}
    out.update({p: "output" for p in spec.outputs})
    out.update({s: "config" for s in spec.config})
    out.update({p: "resolved" for p in spec.resolved})
    if spec.record:
        out["recorded_config"] = "record"
    if spec.beam:
        out["beam"] = "beam"
    if spec.scratch:
        out["scratch"] = "scratch"
    out[PRODUCER] = "producer"
    return out


def check_signature(spec: StepSpec, sections: Mapping[str, type]) -> list[str]:
    """Where the declaration and the function disagree (empty when they agree).
    `sections`: config section name -> its class (from the root config)."""
    problems = []
    signature = inspect.signature(spec.fn)
    params = signature.parameters
    expected = expected_parameters(spec)
    for name in expected:
        if name not in params:
            problems.append(f"{spec.name}: declared {expected[name]} {name!r} is not a "
                            "parameter of the function")
    for name in params:
        if name not in expected:
            problems.append(f"{spec.name}: parameter {name!r} is not declared (the runner "
                            "would never pass it)")
    hints = typing.get_type_hints(spec.fn)
    for name in spec.inputs:
        hint = hints.get(name)
        allowed = (artifacts.Artifact, typing.Optional[artifacts.Artifact]) \
            if spec.is_optional(name) else (artifacts.Artifact,)
        if name in params and hint not in allowed:
            problems.append(f"{spec.name}: input {name!r} should be annotated "
                            f"{'artifacts.Artifact | None' if spec.is_optional(name) else 'artifacts.Artifact'}"
                            f", is {hint!r}")
        if spec.is_optional(name) and name in params and \
                params[name].default is inspect.Parameter.empty:
            problems.append(f"{spec.name}: optional input {name!r} needs a default of None")
    for name in spec.outputs:
        if name in params and hints.get(name) is not str:
            problems.append(f"{spec.name}: output {name!r} should be annotated str (a URI)")
        if spec.outputs[name].__name__ not in artifacts.TYPES:
            problems.append(f"{spec.name}: output {name!r} has unknown artifact type "
                            f"{spec.outputs[name]!r}")
    for name in spec.config:
        if name not in sections:
            problems.append(f"{spec.name}: reads config section {name!r}, which does not exist")
        elif name in params and hints.get(name) is not sections[name]:
            problems.append(f"{spec.name}: config {name!r} should be annotated "
                            f"{sections[name].__name__}, is {hints.get(name)!r}")
    for name in spec.record:
        if name not in sections:
            problems.append(f"{spec.name}: records config section {name!r}, which does not exist")
    if spec.external is not None:
        wanted = inspect.signature(spec.external).parameters
        for name, param in wanted.items():
            if name not in spec.config and param.default is inspect.Parameter.empty:
                problems.append(f"{spec.name}: external inputs function takes {name!r}, which "
                                "is not a config section the step reads")
    for name, what in spec.resolved.items():
        if what not in RESOLVABLE:
            problems.append(f"{spec.name}: {name!r} asks the runner to resolve unknown {what!r}")
    if spec.cache and spec.record:
        problems.append(f"{spec.name}: a cached step cannot take recorded_config (it is not "
                        "in the cache key)")
    return problems
