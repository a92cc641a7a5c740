"""Beam pipeline options shared by the data-parallel steps (ingest, transform, evaluate)."""

from __future__ import annotations

import os

from components.config import BeamConfig

# Measured with bench/ingest.py on 2 cores: below this many inputs the DirectRunner's
# multi-process mode loses more to worker start-up and pickling than it gains (ingest,
# transform, evaluate; `imgpipe predict` switches to a Beam job at the same size).
PARALLEL_MIN_INPUTS = 20_000


def pipeline_args(beam: BeamConfig, num_inputs: int | None = None) -> list[str]:
    """`--flag=value` args for PipelineOptions; DirectRunner mode picked by input size
    unless the config sets `direct_running_mode` itself."""
    args = beam.pipeline_args()
    if beam.runner == "DirectRunner" and "direct_running_mode" not in beam.options:
        big = num_inputs is not None and num_inputs >= PARALLEL_MIN_INPUTS
        if big:
            args.append("--direct_running_mode=multi_processing")
            if "direct_num_workers" not in beam.options:
                args.append(f"--direct_num_workers={os.cpu_count() or 1}")
        else:
            args.append("--direct_running_mode=in_memory")
    return args


def options_from_args(args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(args)


def pipeline_options(beam: BeamConfig, num_inputs: int | None = None):
    return options_from_args(pipeline_args(beam, num_inputs))
