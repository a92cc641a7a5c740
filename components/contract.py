"""The step contract: a DAG step's signature is its whole interface.

A step is a plain function in `components/steps/`, as in TFX's `@component` and KFP's
`Input[...]` / `Output[...]`. Each parameter's annotation says what it is:

    @step(gate="passed", stop=ValidationFailed)
    def run(statistics: In[ExampleStatistics], validate: ValidateConfig,
            anomalies: Out[ExampleAnomalies],
            baseline_statistics: In[ExampleStatistics] | None = None) -> Validated: ...

| annotation               | the runner passes                                            |
|--------------------------|--------------------------------------------------------------|
| `In[T]`                  | a committed, type-checked `artifacts.Artifact` of type T     |
| `In[T] | None = None`    | the same, or None (e.g. the previous run's statistics)       |
| `Out[T]`                 | an open `artifacts.ArtifactWriter` of type T (producer set), |
|                          | committed when the function returns and aborted when it     |
|                          | raises, so a step never commits anything itself (a URI     |
|                          | given instead, as in a direct call, gets a writer too)      |
| a config `Section` class | that config section; the parameter is named as the section  |
| `BaselineModel`          | the registry version holding `push.baseline_alias` (or None) |
| `StartWeights`           | `model.weights` resolved: 'imagenet', a weights file, or the |
|                          | Keras file of the model `run:ID` / `NAME@ALIAS` names (None  |
|                          | without model.weights)                                       |
| `WarmStartModel`         | `train.warm_start` resolved: a `WarmStart` (its Keras file,  |
|                          | the reference, the exact version), or None without one      |
| `TunedValues`            | `train.hyperparameters` resolved: the file holding an        |
|                          | earlier search's best values (or None)                       |
| `Scratch`                | a private folder that survives a failed attempt (checkpoints)|
|                          | and is removed once the outputs are committed               |
| `RecordedConfig`         | the sections named in `record=` (the model card's config)    |
| `Shared`                 | a folder kept across runs (of one runs dir / pipeline root) |
|                          | and this step's code, for work later runs reuse: ingest's  |
|                          | per-span artifacts; None where the runner has none         |

The roles the runner resolves (`BaselineModel`, `StartWeights`, `WarmStartModel`,
`TunedValues`) are the step's only view of references: its config sections stay as
configured (`model.weights: photos@production`), and `pipeline/invoke.py` resolves each
declared role through one table, with an identity for the cache key.

The result is a declared type too: a `Summary` (a TypedDict) whose fields the runner
records and the run's summary reads; `-> dict[str, Any]` for a step that declares
nothing about its result.

`@step(...)` keeps only what a signature cannot say: `gate` (a bool field of the result
that lets the steps behind it run, on every engine: the local runner skips them, KFP
wraps them in `dsl.If`), `closed` (how the run words that gate closed), `stop` (the
error a closed gate ends the run with instead), `delivers` (the result is a `Delivery`:
what the run shipped), `shows` (result fields the run's summary shows), `check` (what
to refuse before a run starts), `cache`, `isolated`, `external`, the `beam` keys that
change results, `record`, and `ui_outputs` (the KFP run page's metrics). `StepSpec` is
derived from both when the module is imported; a parameter whose annotation says
nothing the runner can pass, or a keyword the result type cannot honour (a gate on a
field it lacks), is a TypeError there.
`pipeline/dag.py` wires specs together with real imports and checks the config
section names; `pipeline/invoke.py` is the one place a spec becomes a call.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Mapping, Optional

from components import artifacts, runtime
from components.io import fileio
from components.config.base import Section

# What the runner can resolve for a step from outside the DAG (a role) -> the config key
# whose value it resolves ('' for none: the baseline is the registry's, by the context's
# alias). A role that reads a key needs the step to take that key's section.
BASELINE_MODEL = "baseline_model"   # dir of the registry version holding push.baseline_alias
START_WEIGHTS = "start_weights"     # model.weights -> 'imagenet', a weights or Keras file
WARM_START_MODEL = "warm_start"     # train.warm_start -> a WarmStart
TUNED_VALUES = "tuned_values"       # train.hyperparameters -> a file of best values
RESOLVABLE: Mapping[str, str] = {BASELINE_MODEL: "", START_WEIGHTS: "model.weights",
                                 WARM_START_MODEL: "train.warm_start",
                                 TUNED_VALUES: "train.hyperparameters"}


@dataclass(frozen=True)
class WarmStart:
    """The model `train.warm_start` names, as the runner resolved it: the reference as
    configured (`photos@production`), the exact version (`photos:7`, `run:ID` for a
    local run's model; None while nothing is pushed under the name: a schedule's first
    run trains from scratch) and its Keras file (None then too)."""

    ref: str
    version: str | None
    path: str | None

    @property
    def record(self) -> dict[str, str | None]:
        """What the trained model records of its start: {ref, version}."""
        return {"ref": self.ref, "version": self.version}

    def describe(self) -> str:
        """`photos:7 (photos@production)`, or `photos:7` when it was named so."""
        return (self.version or "") + (f" ({self.ref})" if self.ref != self.version else "")


@dataclass(frozen=True)
class Maybe:
    """A declared input that may be absent (None): how `In[T] | None` is recorded."""

    type: type


@dataclass(frozen=True)
class _Port:
    direction: str          # "input" | "output"
    type: type


@dataclass(frozen=True)
class _Role:
    role: str               # "resolved" | "scratch" | "record"
    what: str = ""


class In:
    """`examples: In[Examples]`: a committed artifact of that type."""

    def __class_getitem__(cls, artifact_type: type) -> Any:
        return Annotated[artifacts.Artifact, _Port("input", _artifact_type(artifact_type))]


class Out:
    """`examples: Out[Examples]`: an open writer of that type, committed by the invoker."""

    def __class_getitem__(cls, artifact_type: type) -> Any:
        return Annotated[artifacts.ArtifactWriter, _Port("output", _artifact_type(artifact_type))]


BaselineModel = Annotated[Optional[str], _Role("resolved", BASELINE_MODEL)]
StartWeights = Annotated[Optional[str], _Role("resolved", START_WEIGHTS)]
WarmStartModel = Annotated[Optional[WarmStart], _Role("resolved", WARM_START_MODEL)]
TunedValues = Annotated[Optional[str], _Role("resolved", TUNED_VALUES)]
Scratch = Annotated[Optional[str], _Role("scratch")]
Shared = Annotated[Optional[str], _Role("shared")]
RecordedConfig = Annotated[Optional[dict], _Role("record")]


class Summary(typing.TypedDict, total=False):
    """A step's result: what the runner records of its execution, and `lines`, printed
    under its step line. A step declares its own as a subclass with the fields its gate
    and the run's summary read, e.g.

        class Evaluated(Summary):
            blessed: bool        # @step(gate="blessed")
            reason: str          # why, when the gate closed
            accuracy: float | None
    """

    lines: list[str]


class Delivery(Summary, total=False):
    """The result of the step that ships the run's model (`@step(delivers=True)`: push),
    which the run's outcome reports: pushed, the version (`model_name`:`version` at
    `path`), `already` when it was a version before, `alias` and `promotion` when an
    alias moved (or stayed behind), and `reason` (why nothing was pushed)."""

    pushed: bool
    model_name: str
    version: int
    path: str
    already: bool
    alias: str
    promotion: dict
    reason: str


@dataclass(frozen=True)
class Closed:
    """How the run words a gate that closed: `says` leads the record of each step behind
    it and the run's last line ('not blessed' -> 'not blessed (REASON)'); `verdict` is the
    one word `runs list` shows (default `says`)."""

    says: str
    verdict: str = ""

    @property
    def word(self) -> str:
        return self.verdict or self.says


@dataclass(frozen=True)
class Where:
    """Where a run's steps are about to run, for their declared checks
    (`@step(check=...)`): on this machine (`runs_dir`: the local runs folder), or in the
    containers of a KFP / Vertex pipeline (`remote`), which reach only buckets and the
    image; `accelerators`: task -> the accelerator type it asks for there (None: none)."""

    remote: bool = False
    runs_dir: str | None = None
    accelerators: Mapping[str, str | None] = field(default_factory=dict)

    def has_tpu(self, task: str) -> bool:
        return (self.accelerators.get(task) or "").upper().startswith("TPU")

    def reaches(self, path: str | None) -> bool:
        """Whether the steps can reach `path` where they run: any path on this machine;
        from a pipeline's containers only an object store (gs://...) or Vertex's /gcs/
        mount of the buckets."""
        if not self.remote:
            return True
        return bool(path) and ("://" in path or path.startswith("/gcs/"))


def _artifact_type(artifact_type: Any) -> type:
    name = getattr(artifact_type, "__name__", None)
    if artifacts.TYPES.get(name) is not artifact_type:
        raise TypeError(f"{artifact_type!r} is not an artifact type of components.artifacts "
                        f"(known: {', '.join(sorted(artifacts.TYPES))})")
    return artifact_type


@dataclass(frozen=True)
class StepSpec:
    """A DAG step's interface, derived from its signature and `@step(...)`:

    inputs:   parameter -> artifact type (or `Maybe(type)`), from `In[...]`.
    outputs:  parameter -> artifact type, from `Out[...]`.
    config:   config sections passed as parameters of the same name (their values
              are in the cache key; the step receives nothing else of the config).
    record:   sections the step only records (the model card), passed together as
              its `RecordedConfig` parameter; never in a cache key (uncached steps only).
    beam:     keys of the `beam` section that change the output; a Beam step takes
              the whole section as `beam: BeamConfig`.
    resolved: parameter -> the role the runner resolves for it (`RESOLVABLE`: the
              baseline, start weights, a warm start, tuned values).
    scratch:  the `Scratch` parameter, if any.
    cache:    False for steps with effects outside their artifacts (push).
    gate:     the bool field of the result whose truth lets the steps behind the step
              run (blessed, passed): those reading its outputs or running after it,
              transitively (`pipeline/dag.py` `gates_of`).
    closed:   how the run words the gate closed (`Closed`).
    stop:     the error a closed gate ends the run with (validate: ValidationFailed,
              with the result's `reason`), after the outputs are committed; None: the
              steps behind it are recorded as not run, and the run goes on.
    delivers: the result is a `Delivery`, the run's outcome (push).
    shows:    result fields the run's summary shows (evaluate's accuracy).
    check:    f(**config sections, where: Where) -> problems (or a ConfigError raised):
              what to refuse before a run starts, locally or at compile/submit.
    result:   the declared result type (a `Summary`), or None.
    isolated: the step's work runs in a child process (infra validation's fresh
              TensorFlow), so the local runner may run it beside the next steps.
    external: f(**config sections) -> {name: fingerprint} of files the step reads
              that no step produces (the data source, a schema file).
    ui_outputs: (parameter, KFP artifact class) of run-page outputs (KFP only).
    """

    name: str
    fn: Callable[..., Any]
    outputs: Mapping[str, type]
    inputs: Mapping[str, type | Maybe] = field(default_factory=dict)
    config: tuple[str, ...] = ()
    record: tuple[str, ...] = ()
    beam: tuple[str, ...] = ()
    resolved: Mapping[str, str] = field(default_factory=dict)
    scratch: str | None = None
    shared: str | None = None
    recorded_param: str | None = None
    cache: bool = True
    gate: str | None = None
    closed: Closed | None = None
    stop: type[Exception] | None = None
    delivers: bool = False
    shows: tuple[str, ...] = ()
    check: Callable[..., Any] | None = None
    result: Any = None
    isolated: bool = False
    external: Callable[..., dict[str, str]] | None = None
    ui_outputs: tuple[tuple[str, str], ...] = ()
    sections: Mapping[str, type] = field(default_factory=dict)

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

    def gate_open(self, summary: Mapping[str, Any] | None) -> bool:
        """Whether the result `summary` lets the steps behind this one run (True for a
        step without a gate)."""
        return self.gate is None or bool((summary or {}).get(self.gate))

    def closed_words(self) -> Closed:
        return self.closed or Closed(f"{self.name} gate closed")

    def stop_error(self, summary: Mapping[str, Any] | None) -> Exception | None:
        """The error that ends the run after this step (`stop`, its gate closed), or None."""
        if self.stop is None or self.gate_open(summary):
            return None
        return self.stop((summary or {}).get("reason") or f"{self.name}: {self.gate} is false")

    def run_checks(self, sections: Mapping[str, Any], where: Where) -> list[str]:
        """The problems the step's `check` finds (its ConfigError raised as is), given
        the config sections by name."""
        if self.check is None:
            return []
        params = inspect.signature(self.check).parameters
        kwargs = {name: sections[name] for name in params if name in sections}
        if "where" in params:
            kwargs["where"] = where
        return list(self.check(**kwargs) or [])


def step(name: str | None = None, *, gate: str | None = None,
         closed: str | Closed | None = None, stop: type[Exception] | None = None,
         delivers: bool = False, shows: tuple[str, ...] = (),
         check: Callable[..., Any] | None = None, cache: bool = True,
         isolated: bool = False, external: Callable[..., dict[str, str]] | None = None,
         beam: tuple[str, ...] = (), record: tuple[str, ...] = (),
         ui_outputs: tuple[tuple[str, str], ...] = ()
         ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declares the decorated function a DAG step (see the module docstring). `name`
    defaults to the module's own name (`components/steps/validate.py` -> validate). A
    step runs with a private temporary folder, removed when it returns or fails
    (TensorFlow, Beam and tensorflow-transform leave files there otherwise)."""

    def attach(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run_step(*args: Any, **kwargs: Any) -> Any:
            kwargs = dict(signature.bind(*args, **kwargs).arguments)
            writers = _open_writers(spec, kwargs)
            try:
                with runtime.private_tempdir():
                    result = fn(**kwargs)
            except BaseException:
                for writer in writers:
                    writer.abort()
                raise
            for writer in writers:
                if not writer.discarded:
                    writer.commit()
            scratch = kwargs.get(spec.scratch) if spec.scratch else None
            if scratch and not any(writer.discarded for writer in writers):
                fileio.rmtree(scratch)       # the checkpoints served their purpose
            return result

        signature = inspect.signature(fn)
        step_name = name or fn.__module__.rsplit(".", 1)[-1]
        derived = _from_signature(step_name, fn)
        spec = StepSpec(name=step_name, fn=run_step, gate=gate,
                        closed=Closed(closed) if isinstance(closed, str) else closed,
                        stop=stop, delivers=delivers, shows=tuple(shows), check=check,
                        cache=cache, isolated=isolated, external=external, beam=tuple(beam),
                        record=tuple(record), ui_outputs=tuple(ui_outputs), **derived)
        problems = _declaration_problems(spec, fn)
        if problems:
            raise TypeError(f"step {step_name} ({fn.__module__}): " + "; ".join(problems))
        run_step.spec = spec  # type: ignore[attr-defined]
        return run_step

    return attach


def _open_writers(spec: StepSpec, kwargs: dict[str, Any]) -> list[artifacts.ArtifactWriter]:
    """Each output as an open writer: the invoker's (producer set), or one made here for
    a URI (a direct call, as tests make)."""
    writers = []
    for param, artifact_type in spec.outputs.items():
        value = kwargs.get(param)
        if isinstance(value, str):
            value = kwargs[param] = artifacts.ArtifactWriter(value, artifact_type)
        if isinstance(value, artifacts.ArtifactWriter):
            writers.append(value)
    return writers


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _from_signature(step_name: str, fn: Callable[..., Any]) -> dict[str, Any]:
    """inputs, outputs, config sections, resolved values, scratch and recorded-config
    parameters, read off the annotations."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params = inspect.signature(fn).parameters
    out: dict[str, Any] = {"inputs": {}, "outputs": {}, "resolved": {}, "sections": {},
                           "result": hints.get("return"),
                           "scratch": None, "shared": None, "recorded_param": None}
    config = []
    for param in params:
        if param not in hints:
            raise TypeError(f"step {step_name}: parameter {param!r} has no annotation; say "
                            "what it is (In[T], Out[T], a config section, a resolved role "
                            "such as BaselineModel, Scratch, RecordedConfig).")
        hint, optional = _unwrap_optional(hints[param])
        marks = getattr(hint, "__metadata__", ())
        mark = next((m for m in marks if isinstance(m, (_Port, _Role))), None)
        if isinstance(mark, _Port) and mark.direction == "input":
            out["inputs"][param] = Maybe(mark.type) if optional else mark.type
        elif isinstance(mark, _Port):
            if optional:
                raise TypeError(f"step {step_name}: output {param!r} cannot be optional")
            out["outputs"][param] = mark.type
        elif isinstance(mark, _Role) and mark.role == "resolved":
            out["resolved"][param] = mark.what
        elif isinstance(mark, _Role) and mark.role in ("scratch", "shared"):
            out[mark.role] = param
        elif isinstance(mark, _Role) and mark.role == "record":
            out["recorded_param"] = param
        elif inspect.isclass(hint) and issubclass(hint, Section):
            if hint.RUNS_BEAM:
                if param != "beam":
                    raise TypeError(f"step {step_name}: the Beam section is passed as 'beam', "
                                    f"not {param!r}")
            else:
                config.append(param)
                out["sections"][param] = hint
        else:
            raise TypeError(f"step {step_name}: parameter {param!r} is annotated {hint!r}, "
                            "which the runner cannot pass (In[T], Out[T], a config section, "
                            "a resolved role such as BaselineModel, Scratch, "
                            "RecordedConfig).")
    out["config"] = tuple(config)
    return out


def _declaration_problems(spec: StepSpec, fn: Callable[..., Any]) -> list[str]:
    """What the signature and the `@step` keywords leave inconsistent."""
    problems = []
    params = inspect.signature(fn).parameters
    takes_beam = "beam" in params
    if takes_beam and not spec.beam:
        problems.append("takes beam: BeamConfig but declares no beam keys (beam=('runner',))")
    if spec.beam and not takes_beam:
        problems.append("declares beam keys but takes no beam: BeamConfig parameter")
    if bool(spec.record) != bool(spec.recorded_param):
        problems.append("record=(...) and a RecordedConfig parameter go together")
    if spec.cache and spec.record:
        problems.append("a cached step cannot record config (it is not in the cache key)")
    for param, kind in spec.inputs.items():
        if isinstance(kind, Maybe) and params[param].default is not None:
            problems.append(f"optional input {param!r} needs a default of None")
    for param in (*spec.outputs, *spec.inputs):
        if param in spec.inputs and isinstance(spec.inputs[param], Maybe):
            continue
        if params[param].default is not inspect.Parameter.empty:
            problems.append(f"{param!r} is required and takes no default")
    for param, what in spec.resolved.items():
        if what not in RESOLVABLE:
            problems.append(f"{param!r} asks the runner to resolve unknown {what!r} (known: "
                            f"{', '.join(RESOLVABLE)})")
        elif RESOLVABLE[what] and RESOLVABLE[what].split(".")[0] not in spec.config:
            section = RESOLVABLE[what].split(".")[0]
            problems.append(f"{param!r} resolves {RESOLVABLE[what]}, so the step takes the "
                            f"{section!r} section too")
        if params[param].default is not None:
            problems.append(f"resolved {param!r} needs a default of None (a direct call "
                            "may leave it out)")
    if not spec.outputs:
        problems.append("a step writes at least one artifact (Out[T])")
    if spec.external is not None:
        for param, value in inspect.signature(spec.external).parameters.items():
            if param not in spec.config and value.default is inspect.Parameter.empty:
                problems.append(f"external inputs function takes {param!r}, which is not a "
                                "config section the step reads")
    ui_names = [p for p, _ in spec.ui_outputs]
    clash = sorted(set(ui_names) & set(params))
    if clash:
        problems.append(f"ui outputs {clash} clash with parameters")
    if spec.check is not None:
        for param, value in inspect.signature(spec.check).parameters.items():
            if param != "where" and param not in spec.config and \
                    value.default is inspect.Parameter.empty:
                problems.append(f"check function takes {param!r}, which is neither a config "
                                "section the step reads nor `where`")
    return problems + _result_problems(spec)


def result_fields(result: Any) -> dict[str, Any]:
    """The fields of a declared result type (a `Summary` TypedDict); {} for none."""
    return typing.get_type_hints(result) if typing.is_typeddict(result) else {}


def _result_problems(spec: StepSpec) -> list[str]:
    """What `gate`, `closed`, `stop`, `delivers` and `shows` ask of the result type that
    it does not declare."""
    problems = []
    fields = result_fields(spec.result)
    declared = f"its result type {getattr(spec.result, '__name__', spec.result)!r}"
    needs = {spec.gate: "its gate", **{f: "shows=" for f in spec.shows}}
    if spec.gate is not None:
        needs["reason"] = "a gate's reason (why it closed)"
    if spec.delivers:
        needs.update({f: "delivers=True" for f in typing.get_type_hints(Delivery)})
    for name, why in needs.items():
        if name is not None and name not in fields:
            problems.append(f"{why} reads field {name!r}, which {declared} lacks: return a "
                            "components.contract.Summary (a TypedDict) that declares it")
    if spec.gate is not None and spec.gate in fields and fields[spec.gate] is not bool:
        problems.append(f"its gate field {spec.gate!r} must be a bool, is {fields[spec.gate]!r}")
    if spec.gate is None and (spec.closed is not None or spec.stop is not None):
        problems.append("closed= and stop= describe a gate: declare gate= too")
    if spec.stop is not None and not (isinstance(spec.stop, type)
                                      and issubclass(spec.stop, Exception)):
        problems.append(f"stop= takes an exception class (ValidationFailed), not {spec.stop!r}")
    return problems


def spec_of(fn: Callable[..., Any]) -> StepSpec:
    spec = getattr(fn, "spec", None)
    if not isinstance(spec, StepSpec):
        raise TypeError(f"{fn.__module__}.{fn.__name__} is not declared with @step(...).")
    return spec


def section_problems(spec: StepSpec, sections: Mapping[str, type]) -> list[str]:
    """Config sections the step names that the root config lacks or types differently
    (`sections`: section name -> its class, from the root config)."""
    problems = []
    for name, cls in spec.sections.items():
        if name not in sections:
            problems.append(f"{spec.name}: reads config section {name!r}, which does not exist")
        elif sections[name] is not cls:
            problems.append(f"{spec.name}: config {name!r} should be annotated "
                            f"{sections[name].__name__}, is {cls.__name__}")
    for name in spec.record:
        if name not in sections:
            problems.append(f"{spec.name}: records config section {name!r}, which does not exist")
    return problems
