"""Beam pipeline options shared by the data-parallel steps (ingest, transform, evaluate)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from typing import Iterator

from components.io import fileio
from components.config.beam import BeamConfig

# The DirectRunner's multi-process mode pays ~2.6 s of worker start-up plus pickling
# every element between processes. Measured with bench/ingest.py on 2 cores it never
# paid off (61,380 PNGs: 7.8 s in-process, 11.4 s with 2 workers), so it is chosen only
# on machines with more cores and for this many inputs (not measured here: no such
# machine). `imgpipe predict` switches to a Beam job at the same size.
PARALLEL_MIN_INPUTS = 100_000
PARALLEL_MIN_CORES = 4


def pipeline_args(beam: BeamConfig, num_inputs: int | None = None) -> list[str]:
    """`--flag=value` args for PipelineOptions; DirectRunner mode picked by input size
    unless the config sets `direct_running_mode` itself."""
    args = beam.pipeline_args()
    if beam.runner == "DirectRunner" and "direct_running_mode" not in beam.options:
        big = (num_inputs is not None and num_inputs >= PARALLEL_MIN_INPUTS
               and (os.cpu_count() or 1) >= PARALLEL_MIN_CORES)
        if big:
            args.append("--direct_running_mode=multi_processing")
            if "direct_num_workers" not in beam.options:
                args.append(f"--direct_num_workers={os.cpu_count() or 1}")
        else:
            args.append("--direct_running_mode=in_memory")
    return args


@contextlib.contextmanager
def temp_dir(beam: BeamConfig, purpose: str) -> Iterator[str]:
    """A temporary folder the runner's workers can reach: under the pipeline's
    temp_location (a bucket) for a remote runner, a local one otherwise; removed after."""
    if beam.remote:
        if not beam.options.get("temp_location"):
            from components.errors import ConfigError

            raise ConfigError(f"beam.runner {beam.runner} needs beam.options.temp_location on "
                              "shared storage (gs://BUCKET/tmp) for its temporary files.")
        path = fileio.join(str(beam.options["temp_location"]),
                           f"imgpipe-{purpose}-{uuid.uuid4().hex}")
        try:
            yield path
        finally:
            fileio.rmtree(path)
        return
    with tempfile.TemporaryDirectory(prefix=f"imgpipe-{purpose}-") as path:
        yield path


def options_from_args(args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(args)


def pipeline_options(beam: BeamConfig, num_inputs: int | None = None):
    return options_from_args(pipeline_args(beam, num_inputs))
