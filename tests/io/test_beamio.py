"""Beam's pipeline options (components/io/beamio.py): the DirectRunner's mode picked by
the input's size and the machine's cores, never overriding a mode the config sets, and
the Beam steps saying how big their input is."""

from __future__ import annotations

import os

import pytest


@pytest.mark.parametrize("inputs,cores,options,expected", [
    (1797, 16, {}, ["--direct_running_mode=in_memory"]),           # small: in-process
    (None, 16, {}, ["--direct_running_mode=in_memory"]),           # size unknown
    (100_000, 2, {}, ["--direct_running_mode=in_memory"]),         # big, but 2 cores
    (99_999, 8, {}, ["--direct_running_mode=in_memory"]),          # just under the size
    (100_000, 4, {}, ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]),
    (250_000, 8, {"direct_num_workers": 3},
     ["--direct_running_mode=multi_processing"]),                  # workers as configured
    (250_000, 8, {"direct_running_mode": "in_memory"}, []),       # the config's own mode
    (10, 8, {"direct_running_mode": "multi_processing"}, []),
])
def test_the_direct_runner_mode_is_picked_by_input_size_and_cores(monkeypatch, inputs, cores,
                                                                  options, expected):
    """components/io/beamio.py: in-process below PARALLEL_MIN_INPUTS inputs or on fewer
    than PARALLEL_MIN_CORES cores (measured: multi-processing never paid off on 2
    cores), else one worker per core; a mode the config sets is never overridden."""
    from components.io import beamio
    from components.config.beam import BeamConfig

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    beam = BeamConfig(options=options)
    added = beamio.pipeline_args(beam, inputs)[len(beam.pipeline_args()):]
    assert added == expected
    other = BeamConfig(runner="DataflowRunner", options=options)
    assert beamio.pipeline_args(other, inputs) == other.pipeline_args()   # Direct only


def test_ingest_and_evaluate_pass_their_input_counts_to_the_mode_policy():
    """The policy only works if the Beam steps say how big their input is: ingest its
    planned inputs, evaluate its eval examples."""
    import inspect

    from components.steps import evaluate, ingest

    assert "beamio.pipeline_args(beam, plan.num_inputs)" in inspect.getsource(ingest)
    assert "beamio.pipeline_args(beam, eval_count)" in inspect.getsource(evaluate)
