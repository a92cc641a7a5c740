"""Two tiny steps for runner tests: `produce` -> `consume` (no TF, no Beam)."""

from __future__ import annotations

import json
import os
from components import artifacts
from components.config.data import DataConfig
from components.config.push import PushConfig
from components.config.train import TrainConfig
from components.contract import (Closed, Delivery, In, Out, Scratch, Summary, Where,
                                 step)
from components.errors import ValidationFailed

CALLS = []


@step(name="produce")
def produce(data: DataConfig, examples: Out[artifacts.Examples]):
    CALLS.append("produce")
    with open(examples.file("data.json"), "w") as handle:
        json.dump({"source": data.source}, handle)
    return {"lines": [f"produced from {data.source}"]}


@step(name="consume")
def consume(examples: In[artifacts.Examples], train: TrainConfig,
            statistics: Out[artifacts.ExampleStatistics]):
    CALLS.append("consume")
    if os.environ.get("FAKE_CONSUME_FAILS"):
        raise RuntimeError("consume crashed")
    artifacts.ExampleStatistics.write(statistics, {"epochs": train.epochs,
                                                   "input": examples.fingerprint})
    return {}


@step(name="slow")
def slow(examples: In[artifacts.Examples], train: TrainConfig,
         statistics: Out[artifacts.ExampleStatistics], scratch: Scratch = None):
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
    artifacts.ExampleStatistics.write(statistics, {"epochs": train.epochs})
    return {}


def refuse_source(data: DataConfig, where: Where) -> list[str]:
    """`checked`'s declared check: a source named 'refused' (and where it would run)."""
    return [f"data.source refused (runs dir {where.runs_dir})"] \
        if data.source == "refused" else []


@step(name="checked", check=refuse_source)
def checked(examples: In[artifacts.Examples], data: DataConfig,
            statistics: Out[artifacts.ExampleStatistics]):
    CALLS.append("checked")
    artifacts.ExampleStatistics.write(statistics, {"source": data.source})
    return {}


class Verdict(Summary):
    passed: bool
    reason: str


# A stop gate (as validate's): FAKE_VERIFY_FAILS closes it, and the run ends after its
# outputs are committed.
@step(name="verify", gate="passed", stop=ValidationFailed)
def verify(examples: In[artifacts.Examples], train: TrainConfig,
           anomalies: Out[artifacts.ExampleAnomalies]) -> Verdict:
    CALLS.append("verify")
    passed = not os.environ.get("FAKE_VERIFY_FAILS")
    artifacts.ExampleAnomalies.write(anomalies, {"anomalies": [] if passed else ["bad"]})
    return Verdict(passed=passed, reason="all good" if passed else
                   f"1 anomaly stops the run (details in {anomalies.uri})")


# A rendezvous of two steps that both read `produce`: `meet` waits for the file `probe`
# (isolated, after it in the DAG) writes, so it passes only when the runner has started
# probe beside it.
RENDEZVOUS = "FAKE_RENDEZVOUS"


@step(name="probe", isolated=True)
def probe(examples: In[artifacts.Examples], train: TrainConfig,
          statistics: Out[artifacts.ExampleStatistics]):
    with open(os.environ[RENDEZVOUS], "w") as handle:
        handle.write("probe started")
    if os.environ.get("FAKE_PROBE_FAILS"):
        from components.errors import DataError

        raise DataError("the probe found the model broken")
    artifacts.ExampleStatistics.write(statistics, {"probe": True})
    return {"lines": ["probed"]}


@step(name="meet")
def meet(examples: In[artifacts.Examples], data: DataConfig,
         statistics: Out[artifacts.ExampleStatistics]):
    import time

    marker = os.environ[RENDEZVOUS]
    for _ in range(200):
        if os.path.exists(marker):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("meet ran alone: probe, after it in the DAG, never started")
    artifacts.ExampleStatistics.write(statistics, {"meet": True})
    return {}


# A fake evaluate, infra validation and push, declared and worded as the real steps
# (what a run says it did: tests/local/test_run_outcome.py). FAKE_VERDICT picks the story:
# blessed (the default), not-blessed, infra (blessed, infra validation failed),
# already (pushed by an earlier run), fails (evaluate raises).
VERDICT = "FAKE_VERDICT"


class Judged(Summary):
    blessed: bool
    reason: str
    accuracy: float


@step(name="evaluate", gate="blessed", closed="not blessed", shows=("accuracy",))
def judge(data: DataConfig, blessing: Out[artifacts.ModelBlessing]) -> Judged:
    from components.errors import DataError

    story = os.environ.get(VERDICT, "blessed")
    if story == "fails":
        raise DataError(f"no eval examples under {data.source}; add images.")
    blessed = story != "not-blessed"
    reason = "all checks passed" if blessed else "accuracy 0.41 (needs >= 0.5)"
    artifacts.ModelBlessing.write(blessing, {"blessed": blessed, "reason": reason,
                                             "checks": []})
    blessing.properties = {"blessed": blessed, "reason": reason}
    return Judged(blessed=blessed, reason=reason, accuracy=0.93 if blessed else 0.41,
                  lines=["BLESSED" if blessed else f"NOT BLESSED: {reason}"])


class Served(Summary):
    passed: bool
    reason: str


@step(name="infra_validate", gate="passed",
      closed=Closed("infra validation failed", verdict="infra failed"))
def serve(data: DataConfig, infra_blessing: Out[artifacts.InfraBlessing]) -> Served:
    passed = os.environ.get(VERDICT, "blessed") != "infra"
    reason = "served" if passed else "the model did not load"
    artifacts.InfraBlessing.write(infra_blessing, {"passed": passed, "reason": reason})
    infra_blessing.properties = {"passed": passed, "reason": reason}
    return Served(passed=passed, reason=reason, lines=[f"passed: {passed}"])


@step(name="push", delivers=True, cache=False)
def publish(blessing: In[artifacts.ModelBlessing], push: PushConfig,
            pushed_model: Out[artifacts.PushedModel]) -> Delivery:
    story = os.environ.get(VERDICT, "blessed")
    record = {"pushed": False, "model_name": push.model_name, "registry": push.destination}
    if not blessing.properties["blessed"]:        # a direct call: the pipeline's gate is closed
        record["reason"] = f"not blessed: {blessing.properties['reason']}"
    else:
        version = 2 if story == "already" else 3
        record.update(pushed=True, version=version,
                      path=os.path.join(push.destination, push.model_name, str(version)),
                      reason="blessed and served in infra validation")
        if story == "already":
            record.update(already=True, reason="this model was already pushed")
    artifacts.PushedModel.write(pushed_model, record)
    pushed_model.properties = record
    return Delivery(**record, lines=[f"pushed: {record['pushed']}"])
