"""The DAGs of tests/fake_steps.py the runner tests run (importable by a child process)."""

from pipeline import dag
from tests import fake_steps

# produce -> consume
STEPS = (
    dag.node(fake_steps.produce),
    dag.node(fake_steps.consume, examples="produce.examples"),
)

# produce -> slow (works a while in its scratch folder: two runs of one config at once)
SLOW = (dag.node(fake_steps.produce), dag.node(fake_steps.slow, examples="produce.examples"))
