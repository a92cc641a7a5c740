"""The one DAG: which step consumes which artifact. The local runner and the KFP
adapter both read it; neither defines the steps again."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    """A step: `components.<module>.run(**inputs, **sections, **outputs, producer=...)`.

    inputs:   parameter name -> "step.output" of an upstream step.
    previous: parameter name -> "step.output" of the last successful run of this
              pipeline (a baseline, e.g. the statistics drift is measured against);
              None on the first run.
    outputs:  output name -> artifact type; the runner passes a fresh URI for each.
    sections: config sections the step receives (its cache key covers exactly these).
    code:     modules whose source text goes into the cache key.
    runtime:  keys of the `beam` section that change the output (not worker counts);
              a step with runtime keys is a Beam step and receives `beam=BeamConfig`.
    baseline: parameter name -> registry alias (`push.baseline_alias` when "default"):
              the runner passes the directory of the version holding it, or None.
    cache:    False for steps with effects outside their artifacts (push): they run
              every time and are idempotent themselves.
    config:   the step also receives the whole config as `pipeline_config` (a dict).
    """

    name: str
    module: str
    outputs: dict[str, str]
    inputs: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str] = field(default_factory=dict)
    sections: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    runtime: tuple[str, ...] = ()
    baseline: dict[str, str] = field(default_factory=dict)
    cache: bool = True
    config: bool = False

    @property
    def upstream(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(ref.split(".")[0] for ref in self.inputs.values()))


STEPS: tuple[Step, ...] = (
    Step(
        name="ingest",
        module="components.ingest",
        outputs={"examples": "Examples", "statistics": "Statistics"},
        sections=("data", "ingest"),
        code=("components.ingest", "components.sources", "components.imaging",
              "components.datasets", "components.artifacts"),
        runtime=("runner",),
    ),
    Step(
        name="validate",
        module="components.validate",
        outputs={"anomalies": "Anomalies", "schema": "Schema"},
        inputs={"statistics": "ingest.statistics"},
        previous={"baseline_statistics": "ingest.statistics"},
        sections=("validate",),
        code=("components.validate", "components.features", "components.artifacts"),
    ),
    Step(
        name="transform",
        module="components.transform",
        outputs={"transform_graph": "TransformGraph"},
        # Validation gates transform: its anomalies are an input, so a failed
        # validation stops the run here and a changed verdict reruns the step.
        inputs={"examples": "ingest.examples", "anomalies": "validate.anomalies"},
        sections=("data", "transform"),
        code=("components.transform", "components.features", "components.imaging",
              "components.artifacts"),
        runtime=("runner",),
    ),
    Step(
        name="train",
        module="components.train",
        outputs={"trained_model": "Model"},
        inputs={"transform_graph": "transform.transform_graph"},
        sections=("model", "train"),
        code=("components.train", "components.models", "components.features",
              "components.artifacts"),
    ),
    Step(
        name="evaluate",
        module="components.evaluate",
        outputs={"evaluation": "Evaluation", "blessing": "Blessing"},
        inputs={"examples": "ingest.examples", "trained_model": "train.trained_model"},
        baseline={"baseline": "default"},
        sections=("evaluate",),
        code=("components.evaluate", "components.features", "components.artifacts"),
        runtime=("runner",),
    ),
    Step(
        name="infra_validate",
        module="components.infra",
        outputs={"infra_blessing": "Blessing"},
        inputs={"trained_model": "train.trained_model", "examples": "ingest.examples"},
        sections=("evaluate",),
        code=("components.infra", "components.features", "components.artifacts"),
    ),
    Step(
        name="push",
        module="components.push",
        outputs={"pushed_model": "PushedModel"},
        inputs={"trained_model": "train.trained_model", "blessing": "evaluate.blessing",
                "infra_blessing": "infra_validate.infra_blessing",
                "evaluation": "evaluate.evaluation", "statistics": "ingest.statistics"},
        sections=("push",),
        code=("components.push", "components.registry", "components.artifacts"),
        cache=False,
        config=True,
    ),
)

STEP_NAMES = tuple(step.name for step in STEPS)


def get(name: str) -> Step:
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(name)

