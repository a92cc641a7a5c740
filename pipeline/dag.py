"""The one DAG: which step consumes which artifact.

Each step's signature is its interface (`components/contract.py`); this module only
wires the declared inputs to upstream outputs, with real imports, and checks the
wiring and the config sections the steps name when it is imported (a misspelt input,
a type mismatch or an unknown section fails at import, not half-way through a run).
The local runner and the KFP adapter both read `STEPS`; neither defines a step again.
Code outside the DAG that reads a step's output (the report, the KFP adapter, the
CLI) names it through `ref("evaluate", "evaluation")`, checked here the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from components.contract import StepSpec, section_problems, spec_of
from components.steps import (evaluate, infer, infra_validate, ingest, push, train, transform,
                              tune, validate)


@dataclass(frozen=True)
class Node:
    """A step in the DAG with its wiring.

    inputs:   parameter -> "step.output" of an upstream step in the same run.
    previous: parameter -> "step.output" of the newest earlier successful run of this
              pipeline (a baseline, e.g. the statistics drift is measured against);
              None on the first run. Only optional inputs can be wired this way.
    after:    earlier steps that must have succeeded first although none of their
              outputs is read (validation before transform): an order and a gate, not
              an input, so a step that reran with the same verdict (validate checks
              drift against each new run) leaves this one's cache key alone.
    enabled:  for an optional step, f(root config) -> whether a run of that config
              has it (infer: only with infer.source); None: every run has it. Both
              runners and the KFP compiler take the steps through `active`.
    """

    spec: StepSpec
    inputs: Mapping[str, str] = field(default_factory=dict)
    previous: Mapping[str, str] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    enabled: Callable[[Any], bool] | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def node(fn: Callable[..., Any], previous: Mapping[str, str] | None = None,
         after: tuple[str, ...] = (), enabled: Callable[[Any], bool] | None = None,
         **inputs: str) -> Node:
    return Node(spec_of(fn), inputs, previous or {}, tuple(after), enabled)


def infer_configured(config: Any) -> bool:
    """Whether a run of `config` scores a batch after push: infer.source is set."""
    return config.infer.source is not None


STEPS: tuple[Node, ...] = (
    node(ingest.run),
    node(validate.run, statistics="ingest.statistics",
         previous={"baseline_statistics": "ingest.statistics"}),
    # Validation stops the run before transform when it finds errors.
    node(transform.run, examples="ingest.examples", after=("validate",)),
    node(tune.run, transform_graph="transform.transform_graph", examples="ingest.examples"),
    node(train.run, transform_graph="transform.transform_graph", examples="ingest.examples",
         hyperparameters="tune.hyperparameters"),
    node(evaluate.run, examples="ingest.examples", trained_model="train.trained_model"),
    node(infra_validate.run, trained_model="train.trained_model", examples="ingest.examples"),
    node(push.run, trained_model="train.trained_model", blessing="evaluate.blessing",
         infra_blessing="infra_validate.infra_blessing", evaluation="evaluate.evaluation",
         statistics="ingest.statistics"),
    # Optional: batch inference with the model just pushed, only with infer.source.
    node(infer.run, pushed_model="push.pushed_model", trained_model="train.trained_model",
         enabled=infer_configured),
)


def active(steps: tuple[Node, ...], config: Any) -> tuple[Node, ...]:
    """The steps a run of `config` has: `steps` without each optional step whose
    `enabled(config)` is False, and without every step that reads an output of one
    left out or runs after it. A config that enables nothing optional runs exactly the
    steps, tasks and cache keys it ran before the optional steps existed."""
    kept: list[Node] = []
    left: set[str] = set()
    for current in steps:
        upstream = {ref.split(".")[0] for ref in current.inputs.values()} | set(current.after)
        if (current.enabled is not None and not current.enabled(config)) or upstream & left:
            left.add(current.name)
        else:
            kept.append(current)
    return tuple(kept)


def gates_of(node: Node, steps: tuple[Node, ...] = STEPS) -> list[str]:
    """The gating steps whose outputs `node` reads, or that it runs after, directly or
    through other steps (in DAG order): it runs only when each of their gates is open
    (push: evaluate blessed, infra validation passed). A gate that `stop`s the run when
    it closes (validate) holds nothing back: no step runs after it closed."""
    found: set[str] = set()
    frontier = [ref.split(".")[0] for ref in node.inputs.values()] + list(node.after)
    seen: set[str] = set()
    while frontier:
        name = frontier.pop(0)
        if name in seen:
            continue
        seen.add(name)
        upstream = get(name, steps)
        if upstream.spec.gate is not None and upstream.spec.stop is None:
            found.add(name)
        frontier.extend(ref.split(".")[0] for ref in upstream.inputs.values())
        frontier.extend(upstream.after)
    return [n.name for n in steps if n.name in found]


def closed_gates(node: Node, steps: tuple[Node, ...],
                 summaries: Mapping[str, Mapping[str, Any] | None]) -> list[Node]:
    """The gating steps before `node` whose gate a run closed (`summaries`: step ->
    its recorded result, for the steps that ran): `node` then does not run, on any
    engine (the local runner and kfp.local record it as not run; KFP's `dsl.If`)."""
    return [get(name, steps) for name in gates_of(node, steps)
            if name in summaries and not get(name, steps).spec.gate_open(summaries[name])]


def check_before_run(steps: tuple[Node, ...], config: Any, where: Any) -> None:
    """Each step's declared check (`@step(check=...)`) with the config sections it
    reads (`config.section`) and `where` it is about to run (`contract.Where`): the
    problems found are one ConfigError, before any step runs."""
    from components.errors import ConfigError

    problems = [problem for node in steps for problem in node.spec.run_checks(
        {name: config.section(name) for name in node.spec.config}, where)]
    if problems:
        raise ConfigError("; ".join(problems))


def wiring_problems(steps: tuple[Node, ...]) -> list[str]:
    """Inputs not wired or wired twice, references to unknown or later steps, type
    mismatches between a producer's output and a consumer's input."""
    problems = []
    outputs: dict[str, str] = {}     # "step.output" -> artifact type, of earlier steps
    names = [n.name for n in steps]
    if len(set(names)) != len(names):
        problems.append(f"step names repeat: {names}")
    for current in steps:
        spec = current.spec
        wired = [*current.inputs, *current.previous]
        for param in spec.inputs:
            if wired.count(param) != 1:
                how = "not wired" if param not in wired else "wired twice"
                problems.append(f"{spec.name}: input {param!r} is {how}")
        for param in wired:
            if param not in spec.inputs:
                problems.append(f"{spec.name}: {param!r} is wired but not a declared input")
        for kind, wiring in (("input", current.inputs), ("previous", current.previous)):
            for param, ref in wiring.items():
                known = outputs if kind == "input" else {**outputs, **_outputs_of(current)}
                if ref not in known:
                    problems.append(f"{spec.name}: {param} <- {ref!r} names no output of an "
                                    "earlier step")
                elif param in spec.inputs and known[ref] != spec.input_type(param):
                    problems.append(f"{spec.name}: {param} expects {spec.input_type(param)}, "
                                    f"{ref} is {known[ref]}")
                if kind == "previous" and param in spec.inputs and not spec.is_optional(param):
                    problems.append(f"{spec.name}: {param!r} comes from an earlier run, which "
                                    "may not exist: declare it In[T] | None = None")
        earlier = {ref.split(".")[0] for ref in outputs}
        for name in current.after:
            if name not in earlier:
                problems.append(f"{spec.name}: runs after {name!r}, which is no earlier step")
        outputs.update(_outputs_of(current))
    return problems


def _outputs_of(current: Node) -> dict[str, str]:
    return {f"{current.name}.{out}": current.spec.output_type(out) for out in current.spec.outputs}


def check(steps: tuple[Node, ...]) -> None:
    """Raises TypeError when the wiring or a step's config sections are wrong."""
    from pipeline.config import section_types

    sections = section_types()
    problems = wiring_problems(steps) + [p for n in steps for p in section_problems(n.spec, sections)]
    if problems:
        raise TypeError("the DAG's wiring is wrong: " + "; ".join(problems))


check(STEPS)


@dataclass(frozen=True)
class Ref:
    """A step's output as code outside the DAG names it (`ref("evaluate", "evaluation")`).
    `uri(outputs)` finds it among a run's outputs ({"step.output": uri}); None when that
    run did not produce it (it stopped earlier, or ran with --until)."""

    step: str
    output: str
    type: str

    def __str__(self) -> str:
        return f"{self.step}.{self.output}"

    def uri(self, outputs: Mapping[str, str]) -> str | None:
        return outputs.get(str(self))


def ref(step: str, output: str, steps: tuple[Node, ...] | None = None) -> Ref:
    """The output `output` of step `step`; KeyError when the DAG has no such output, so a
    renamed output fails where it is referenced, at import."""
    for candidate in steps or STEPS:
        if candidate.name == step:
            if output not in candidate.spec.outputs:
                raise KeyError(f"step {step} has no output {output!r} (it has "
                               f"{', '.join(candidate.spec.outputs)})")
            return Ref(step, output, candidate.spec.output_type(output))
    raise KeyError(f"the DAG has no step {step!r} ({', '.join(n.name for n in steps or STEPS)})")


def load(location: str = "") -> tuple[Node, ...]:
    """The DAG a run uses: `STEPS`, or the steps a user's module defines at
    "package.module:ATTRIBUTE" (`--dag`), e.g. the built-in steps and one more:

        from pipeline import dag
        from mysteps import count_classes
        STEPS = (*dag.STEPS, dag.node(count_classes.run, examples="ingest.examples"))

    checked as STEPS is (a ConfigError naming the problems)."""
    if not location:
        return STEPS
    import importlib

    from components import _moved
    from components.errors import ConfigError

    _moved.install()       # a DAG written against the old module names loads, with a warning
    module, _, attribute = location.partition(":")
    try:
        steps = tuple(getattr(importlib.import_module(module), attribute or "STEPS"))
    except (ImportError, AttributeError, TypeError) as exc:
        raise ConfigError(f"--dag {location!r}: {type(exc).__name__}: {exc}; give "
                          "MODULE:ATTRIBUTE naming a tuple of dag.node(...) steps.") from None
    try:
        check(steps)
    except TypeError as exc:
        raise ConfigError(f"--dag {location!r}: {exc}") from None
    return steps


def names(steps: tuple[Node, ...] = STEPS) -> list[str]:
    return [n.name for n in steps]


def get(name: str, steps: tuple[Node, ...] = STEPS) -> Node:
    for candidate in steps:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
