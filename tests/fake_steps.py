"""Two tiny steps for runner tests: `produce` -> `consume` (no TF, no Beam)."""

import json
import os

from components import artifacts

CALLS = []


def produce(data, examples, producer):
    CALLS.append("produce")
    with artifacts.writing(examples, "Examples", producer) as writer:
        with open(writer.file("data.json"), "w") as handle:
            json.dump({"source": data.source}, handle)
        writer.commit()
    return {"lines": [f"produced from {data.source}"]}


def consume(examples, train, statistics, producer):
    CALLS.append("consume")
    if os.environ.get("FAKE_CONSUME_FAILS"):
        raise RuntimeError("consume crashed")
    with artifacts.writing(statistics, "Statistics", producer) as writer:
        with open(writer.file("stats.json"), "w") as handle:
            json.dump({"epochs": train.epochs, "input": examples.fingerprint}, handle)
        writer.commit()
    return {}
