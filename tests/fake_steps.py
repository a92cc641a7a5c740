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


# A rendezvous of two steps that both read `produce`: `meet` waits for the file `probe`
# (isolated, after it in the DAG) writes, so it passes only when the runner has started
# probe beside it.
RENDEZVOUS = "FAKE_RENDEZVOUS"


@step(name="probe", inputs={"examples": artifacts.Examples},
      outputs={"statistics": artifacts.ExampleStatistics}, config=("train",), isolated=True)
def probe(examples: artifacts.Artifact, train: TrainConfig, statistics: str,
          producer: dict[str, Any] | None = None):
    with open(os.environ[RENDEZVOUS], "w") as handle:
        handle.write("probe started")
    if os.environ.get("FAKE_PROBE_FAILS"):
        from components.errors import DataError

        raise DataError("the probe found the model broken")
    with artifacts.writing(statistics, "ExampleStatistics", producer) as writer:
        with open(writer.file("stats.json"), "w") as handle:
            json.dump({"probe": True}, handle)
        writer.commit()
    return {"lines": ["probed"]}


@step(name="meet", inputs={"examples": artifacts.Examples},
      outputs={"statistics": artifacts.ExampleStatistics}, config=("data",))
def meet(examples: artifacts.Artifact, data: DataConfig, statistics: str,
         producer: dict[str, Any] | None = None):
    import time

    marker = os.environ[RENDEZVOUS]
    for _ in range(200):
        if os.path.exists(marker):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("meet ran alone: probe, after it in the DAG, never started")
    with artifacts.writing(statistics, "ExampleStatistics", producer) as writer:
        with open(writer.file("stats.json"), "w") as handle:
            json.dump({"meet": True}, handle)
        writer.commit()
    return {}
