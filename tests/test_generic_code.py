"""Generic code names no step: the runners, the run's results, the KFP compiler and its
checks work from what each step declares (`@step(gate=..., closed=..., stop=...,
delivers=..., shows=..., check=...)`), so a DAG of other steps (`--dag`) runs,
compiles and reports the same way, and a renamed step changes only its own module and
the DAG."""

from __future__ import annotations

import ast
import os

import pytest

from pipeline import dag

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The modules that must work for any DAG. Code outside them names steps through
# `dag.ref("evaluate", "evaluation")` (checked at import), or is a step's own module.
GENERIC = ("pipeline/results.py", "pipeline/local/runner.py", "pipeline/kfp/checks.py",
           "pipeline/kfp/compile.py", "pipeline/kfp/builder.py", "pipeline/kfp/step_builder.py",
           "pipeline/kfp/parameters.py", "pipeline/kfp/local.py", "pipeline/kfp/entrypoint.py",
           "pipeline/cli/run.py")


def step_names_in(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, literal) of each string literal of `source` that is a step's name."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in names]


@pytest.mark.parametrize("path", GENERIC)
def test_generic_code_names_no_step(path):
    found = step_names_in(open(os.path.join(ROOT, path), encoding="utf-8").read(),
                          set(dag.names()))
    assert found == [], (
        f"{path} names the step(s) {found}: declare what it needs on the step instead "
        "(@step(gate=..., delivers=..., shows=..., check=...)) and read it from its spec; a "
        "config section of the same name is read as an attribute (config.train), not by "
        "its name as a string.")


def test_the_scan_finds_a_step_name():
    """The check above would see a step named in generic code."""
    assert step_names_in('if "push" in steps:\n    x = "pushed"\n', {"push"}) == [(1, "push")]
