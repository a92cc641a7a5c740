"""A step added as docs/architecture.md says ("adding a step"): this one module and one
`node(...)` line. It reads ingest's examples and the `data` section, and writes an
artifact type of its own; `imgpipe run CONFIG --dag tests.toy_step:STEPS` runs it
with the built-in steps, under either engine."""

from __future__ import annotations

from typing import Any

from components import artifacts
from components.config.data import DataConfig
from components.contract import In, Out, step
from pipeline import dag


@artifacts.register_type
class ClassShares(artifacts.ArtifactType):
    """Each class's share of the training split. Layout: `{uri}/shares.json`."""

    FILE = "shares.json"


@step(name="class_shares")
def run(examples: In[artifacts.Examples], data: DataConfig,
        shares: Out[ClassShares]) -> dict[str, Any]:
    counts = examples.properties["counts"]["train"]
    total = sum(counts.values())
    values = {label: round(n / total, 4) for label, n in sorted(counts.items())}
    ClassShares.write(shares, {"source": data.source, "shares": values})
    shares.properties = {"classes": len(values)}
    return {"lines": [f"{len(values)} classes, largest share {max(values.values()):.3f}"]}


STEPS = (dag.STEPS[0], dag.node(run, examples="ingest.examples"), *dag.STEPS[1:])
