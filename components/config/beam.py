"""The `beam` section: the Beam runner and its options."""

from __future__ import annotations

from typing import Any, ClassVar
from pydantic import Field, field_validator

from components.config.base import Section


# Beam's runner names (apache_beam.runners.runner._RUNNER_MAP; a test holds them
# together); any other runner is given as a dotted class path.
BEAM_RUNNERS = ("DataflowRunner", "DirectRunner", "BundleBasedDirectRunner",
                "SwitchingDirectRunner", "InteractiveRunner", "FlinkRunner", "FnApiRunner",
                "KafkaStreamsRunner", "PortableRunner", "PrismRunner", "SparkRunner",
                "TestDirectRunner", "TestDataflowRunner", "PythonRPCDirectRunner")
# Runners that execute in this process or on this machine: every other runner's
# workers see none of the container's files.
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner",
                 "SwitchingDirectRunner", "InteractiveRunner", "PrismRunner", "TestDirectRunner")


class BeamConfig(Section):
    """Beam runner for the data-parallel steps; options pass through to PipelineOptions."""

    RUNS_BEAM: ClassVar[bool] = True

    runner: str = Field(
        "DirectRunner", description="DirectRunner (in-process, on Beam's FnApiRunner), "
                                    "DataflowRunner, or any Beam runner name.")
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, value: str) -> str:
        if value not in BEAM_RUNNERS and "." not in value:
            raise ValueError(f"unknown Beam runner {value!r}; use one of "
                             f"{', '.join(BEAM_RUNNERS[:4])} ... or a class path "
                             "(package.module.MyRunner)")
        return value

    @property
    def remote(self) -> bool:
        """Whether the runner's workers run elsewhere (Dataflow, Flink, Spark ...)."""
        return self.runner not in LOCAL_RUNNERS

    def pipeline_args(self) -> list[str]:
        """The options as `--key=value` flags for `PipelineOptions`. DirectRunner maps to
        the FnApiRunner it would pick anyway: Beam 2.77's DirectRunner first tries to
        download and start the Prism runner binary, which costs time offline and, online,
        would run the steps on a different engine than the one measured here."""
        runner = "FnApiRunner" if self.runner == "DirectRunner" else self.runner
        args = [f"--runner={runner}"]
        for key, value in sorted(self.options.items()):
            if isinstance(value, bool):
                if value:
                    args.append(f"--{key}")
            elif isinstance(value, (list, tuple)):
                args.extend(f"--{key}={item}" for item in value)
            else:
                args.append(f"--{key}={value}")
        return args
