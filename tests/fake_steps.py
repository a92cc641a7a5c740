"""Two tiny steps for runner tests: `produce` -> `consume` (no TF, no Beam)."""

from __future__ import annotations

import json
import os
from typing import Any

from components import artifacts
from components.config import DataConfig, TrainConfig
from components.contract import step

CALLS = []


@step(name="produce", outputs={"examples": artifacts.Examples}, config=("data",))
def produce(data: DataConfig, examples: str, producer: dict[str, Any] | None = None):
    CALLS.append("produce")
    with artifacts.writing(examples, "Examples", producer) as writer:
        with open(writer.file("data.json"), "w") as handle:
            json.dump({"source": data.source}, handle)
        writer.commit()
    return {"lines": [f"produced from {data.source}"]}


@step(name="consume", inputs={"examples": artifacts.Examples},
      outputs={"statistics": artifacts.ExampleStatistics}, config=("train",))
def consume(examples: artifacts.Artifact, train: TrainConfig, statistics: str,
            producer: dict[str, Any] | None = None):
    CALLS.append("consume")
    if os.environ.get("FAKE_CONSUME_FAILS"):
        raise RuntimeError("consume crashed")
    with artifacts.writing(statistics, "ExampleStatistics", producer) as writer:
        with open(writer.file("stats.json"), "w") as handle:
            json.dump({"epochs": train.epochs, "input": examples.fingerprint}, handle)
        writer.commit()
    return {}


@step(name="slow", inputs={"examples": artifacts.Examples},
      outputs={"statistics": artifacts.ExampleStatistics}, config=("train",), scratch=True)
def slow(examples: artifacts.Artifact, train: TrainConfig, statistics: str,
         scratch: str | None = None, producer: dict[str, Any] | None = None):
    """Claims its scratch folder, works a while, and fails if anyone else wrote there."""
    import time

    os.makedirs(scratch, exist_ok=True)
    owner = os.path.join(scratch, "owner")
    with open(owner, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(float(os.environ.get("FAKE_SLOW_SECONDS", "1.5")))
    with open(owner) as handle:
        if handle.read() != str(os.getpid()):
            raise RuntimeError("another execution wrote into my scratch folder")
    with artifacts.writing(statistics, "ExampleStatistics", producer) as writer:
        with open(writer.file("stats.json"), "w") as handle:
            json.dump({"epochs": train.epochs}, handle)
        writer.commit()
    return {}
