"""Evaluate's statistics and infra validation on models built in the test."""

import json

import numpy as np
import pytest

from components import artifacts
from components.evaluation import gate
from components.config.evaluate import EvaluateConfig
from components.config.infra_validate import InfraValidateConfig
from components.steps import evaluate
from components.steps import infra_validate as infra
from tests import fixtures

# The tests build SavedModels with tf.function here, outside a step (which has a private
# temporary folder of its own); the whole suite's run named this module after autograph
# files appeared in its folder.
pytestmark = pytest.mark.usefixtures("private_tmp")


def test_paired_bootstrap_and_mcnemar():
    rng = np.random.default_rng(1)
    base = rng.random(2000) < 0.80
    better = base | (rng.random(2000) < 0.25)        # fixes a quarter of the mistakes
    result = gate.paired_comparison(better, base, 2000, 0.95)
    assert result["difference"] == pytest.approx(better.mean() - base.mean())
    assert 0 < result["ci_low"] < result["difference"] < result["ci_high"]
    assert result["baseline_only_correct"] == 0 and result["mcnemar_p"] < 1e-6
    same = gate.paired_comparison(base, base, 500, 0.95)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    assert same["mcnemar_p"] == 1.0
    # 50 examples, the candidate loses 3 and wins 1: -0.04 looks acceptable under a
    # 0.05 allowed drop, but the interval's lower bound does not (gate: lower_bound).
    base_ok = np.ones(50, bool)
    cand_ok = np.ones(50, bool)
    base_ok[:1] = False
    cand_ok[1:4] = False
    small = gate.paired_comparison(cand_ok, base_ok, 4000, 0.95)
    assert small["difference"] == pytest.approx(-0.04)
    assert small["difference"] >= -0.05 > small["ci_low"]
    assert (small["candidate_only_correct"], small["baseline_only_correct"]) == (1, 3)
    assert small["mcnemar_p"] == pytest.approx(0.625)     # 2 * P(X <= 1), X ~ Bin(4, 1/2)
    thresholds = {"accuracy": {"min": 0.5, "max_drop": 0.05}}
    point = gate.gate_check(small, EvaluateConfig(thresholds=thresholds), "m:1")
    bound = gate.gate_check(small, EvaluateConfig(thresholds=thresholds,
                                                      gate="lower_bound"), "m:1")
    assert (point["verdict"], bound["verdict"]) == ("pass", "fail")
    assert bound["value"] == small["ci_low"] and "lower bound of the 95% CI" in bound["check"]
    strict = gate.gate_check(small, EvaluateConfig(thresholds={"accuracy": {"min": 0.5}},
                                                   gate="point"), "m:1")
    assert strict["verdict"] == "fail" and strict["bound"] == {"min": -0.0}


def _retrain_pair(n: int, base_accuracy: float, disagree: float, difference: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-example correctness of a baseline and a candidate on the same n examples:
    `disagree` of the examples answered right by exactly one of them, the candidate
    `difference` examples ahead (negative: behind)."""
    rng = np.random.default_rng(seed)
    base = np.zeros(n, bool)
    base[:round(n * base_accuracy)] = True
    cand = base.copy()
    discordant = round(n * disagree)
    wins = (discordant + difference) // 2          # candidate right, baseline wrong
    losses = discordant - wins
    right, wrong = np.flatnonzero(base), np.flatnonzero(~base)
    cand[wrong[:wins]] = True
    cand[right[:losses]] = False
    order = rng.permutation(n)
    return cand[order], base[order]


@pytest.mark.parametrize("seed", range(5))
def test_the_default_gate_blesses_a_retrain_within_noise_and_refuses_a_worse_model(seed):
    """What a daily schedule meets (issue 31): 90 eval examples of a ~72% accurate model,
    a retrain with another seed disagreeing on a fifth of them and one example behind;
    the old default (point estimate, max_drop 0) refused it. A model 15 points worse
    is refused, with the rule and its numbers in the check."""
    defaults = EvaluateConfig()
    assert defaults.gate == "paired" and defaults.thresholds["accuracy"].max_drop is None
    cand, base = _retrain_pair(90, 0.72, 0.19, -1, seed)
    same = gate.paired_comparison(cand, base, defaults.bootstrap_samples, defaults.confidence,
                                  seed)
    check = gate.gate_check(same, defaults, "photos:4")
    assert same["difference"] == pytest.approx(-1 / 90)
    assert check["verdict"] == "pass", check
    assert check["rule"].startswith("paired gate: within noise (95% CI [")
    worse_cand, worse_base = _retrain_pair(90, 0.72, 0.2, -14, seed)
    worse = gate.paired_comparison(worse_cand, worse_base, defaults.bootstrap_samples,
                                   defaults.confidence, seed)
    refused = gate.gate_check(worse, defaults, "photos:4")
    assert worse["difference"] == pytest.approx(-14 / 90)
    assert refused["verdict"] == "fail" and "significantly worse" in refused["rule"]
    assert gate.resolution_note(same).startswith("note: 90 eval examples decide differences")
    # a stated tolerance: significantly worse, but by less than max_drop, is blessed
    big = gate.paired_comparison(*_retrain_pair(20000, 0.9, 0.04, -120, seed), 1000, 0.95,
                                 seed)
    assert big["ci_high"] < 0 and gate.resolution_note(big) is None
    tolerant = EvaluateConfig(thresholds={"accuracy": {"min": 0.5, "max_drop": 0.01}})
    assert gate.gate_check(big, defaults, "m:1")["verdict"] == "fail"
    assert gate.gate_check(big, tolerant, "m:1")["verdict"] == "pass"


def test_under_the_paired_gate_tfma_has_no_point_change_threshold_on_accuracy():
    """max_drop on accuracy is the paired gate's tolerance, not a TFMA change threshold
    on the point estimate (which would refuse a retrain one example behind again);
    other metrics and the point gate keep TFMA's change threshold."""
    thresholds = {"accuracy": {"min": 0.5, "max_drop": 0.01},
                  "top_k_accuracy": {"min": 0.5, "max_drop": 0.01}}
    def changes(cfg):
        config = evaluate.eval_config(cfg, 3, True)
        return {m.class_name: t.threshold.HasField("change_threshold")
                for spec in config.metrics_specs for m in spec.metrics
                for t in m.per_slice_thresholds}
    paired = changes(EvaluateConfig(thresholds=thresholds))
    assert paired == {"SparseCategoricalAccuracy": False, "SparseTopKCategoricalAccuracy": True}
    point = changes(EvaluateConfig(thresholds=thresholds, gate="point"))
    assert point == {"SparseCategoricalAccuracy": True, "SparseTopKCategoricalAccuracy": True}


def test_threshold_on_unknown_metric_is_a_config_error():
    with pytest.raises(Exception, match="unknown metrics"):
        evaluate.eval_config(EvaluateConfig(thresholds={"acuracy": {"min": 0.5}}), 3, False)


def _broken_model(path, vocabulary):
    """A SavedModel with the right signature names whose probabilities do not sum to 1."""
    import tensorflow as tf

    class Broken(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            n = tf.shape(examples)[0]
            probs = tf.ones([n, len(vocabulary)]) * 0.9
            return {"probabilities": probs, "class_id": tf.zeros([n], tf.int32),
                    "class_name": tf.fill([n], "no-such-class")}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve_images(self, images):
            return self.serve(images)

    module = Broken()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                  "serving_images": module.serve_images})


def _model_artifact(tmp_path, build):
    uri = str(tmp_path / "model")
    with artifacts.writing(uri, artifacts.Model) as writer:
        build(writer.file(artifacts.Model.SAVED_MODEL))
        writer.properties = {"label_vocabulary": list(fixtures.CLASSES)}
        writer.commit()
    return artifacts.read(uri)


def test_infra_validation_catches_a_broken_model(tmp_path):
    examples, _ = fixtures.examples_artifact(tmp_path, per_class=4)
    model = _model_artifact(tmp_path, lambda p: _broken_model(p, fixtures.CLASSES))
    summary = infra.run(model, examples, InfraValidateConfig(), infra_blessing=str(tmp_path / "ib"))
    verdict = artifacts.read(str(tmp_path / "ib"), "InfraBlessing")
    assert summary["passed"] is False and verdict.properties["passed"] is False
    assert "do not sum to 1" in verdict.properties["reason"]
    assert "outside the vocabulary" in verdict.properties["reason"]


def test_infra_validation_catches_a_model_that_does_not_load(tmp_path):
    examples, _ = fixtures.examples_artifact(tmp_path, per_class=2)

    def not_a_model(path):
        import os
        os.makedirs(path)
        open(f"{path}/saved_model.pb", "wb").write(b"garbage")

    model = _model_artifact(tmp_path, not_a_model)
    infra.run(model, examples, InfraValidateConfig(), infra_blessing=str(tmp_path / "ib"))
    record = artifacts.InfraBlessing.read(str(tmp_path / "ib"))
    assert record["passed"] is False and "fresh process" in record["reason"]


def test_eval_config_scopes_thresholds_to_the_configured_slices():
    cfg = EvaluateConfig(thresholds={"accuracy": {"min": 0.8, "max_drop": 0.01,
                                                  "slices": ["label"]},
                                     "top_k_accuracy": {"min": 0.9}},
                         slice_features=["height"], top_k=5, gate="point")
    config = evaluate.eval_config(cfg, num_classes=3, with_baseline=True)
    assert [m.name for m in config.model_specs] == ["candidate", "baseline"]
    assert config.model_specs[1].is_baseline
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["label"], ["height"]]
    metrics = {m.class_name: m for m in config.metrics_specs[0].metrics}
    accuracy = metrics["SparseCategoricalAccuracy"].per_slice_thresholds[0]
    # the accuracy bound applies overall and per label, not to the height slices
    assert [list(s.feature_keys) for s in accuracy.slicing_specs] == [[], ["label"]]
    assert accuracy.threshold.value_threshold.lower_bound.value == 0.8
    assert accuracy.threshold.change_threshold.absolute.value == -0.01
    top_k = metrics["SparseTopKCategoricalAccuracy"]
    assert '"k": 3' in top_k.config                      # k capped at the class count
    assert not evaluate.eval_config(cfg, 3, with_baseline=False).metrics_specs[0].metrics[
        0].per_slice_thresholds[0].threshold.HasField("change_threshold")


def test_label_slices_only_when_a_threshold_or_slice_names_them():
    """TFMA computes every metric per slice: the label slices (10x the work on
    10 classes) are asked for only when the config needs them."""
    plain = evaluate.eval_config(EvaluateConfig(slice_features=["height"]), 3, False)
    assert [list(s.feature_keys) for s in plain.slicing_specs] == [[], ["height"]]
    asked = evaluate.eval_config(EvaluateConfig(slice_features=["label"]), 3, False)
    assert [list(s.feature_keys) for s in asked.slicing_specs] == [[], ["label"]]


def test_per_class_metrics_match_scikit_learn():
    """Per-class precision/recall/F1 from the confusion matrix and AUC/calibration from
    the scoring job's histograms, summed over batches, agree with scikit-learn."""
    from sklearn import metrics

    from components.evaluation import scoring

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 600)
    logits = rng.normal(size=(600, 3)) + 1.5 * np.eye(3)[truth]
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    parts = [scoring.curve_histograms(probs[i:i + 256], list(truth[i:i + 256]))
             for i in range(0, 600, 256)]
    curves = scoring.add_histograms(parts)
    predicted = probs.argmax(axis=1)
    confusion = metrics.confusion_matrix(truth, predicted).tolist()
    got = evaluate.class_metrics(confusion, ["a", "b", "c"], curves)
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(truth, predicted)
    for index, name in enumerate("abc"):
        assert got[name]["precision"] == pytest.approx(precision[index])
        assert got[name]["recall"] == pytest.approx(recall[index])
        assert got[name]["f1_score"] == pytest.approx(f1[index])
        assert got[name]["auc"] == pytest.approx(
            metrics.roc_auc_score(truth == index, probs[:, index]), abs=2e-3)
        assert got[name]["calibration"] == pytest.approx(
            probs[:, index].sum() / (truth == index).sum(), rel=1e-5)
    # a class never predicted and never seen: no precision, recall or AUC, not zero
    empty = evaluate.class_metrics([[5, 0], [0, 0]], ["x", "y"], None)["y"]
    assert empty["precision"] is None and empty["recall"] is None and empty["auc"] is None


def test_report_puts_overall_first_reads_bounds_and_flags_drops(tmp_path):
    from types import SimpleNamespace

    from pipeline.report import html as report

    evaluation, blessing = tmp_path / "evaluation", tmp_path / "blessing"
    evaluation.mkdir()
    blessing.mkdir()
    (evaluation / artifacts.ModelEvaluation.FILE).write_text(json.dumps({
        "metrics": {"slices": {"label=b": {"accuracy": 0.5, "example_count": 10.0},
                               "overall": {"accuracy": 0.7, "example_count": 39.0}},
                    "per_class": {"b": {"recall": 0.3}, "a": {"recall": 0.9}},
                    "confusion": [[0]]},
        "comparison": {"baseline": "m:1", "baseline_accuracy": 0.836,
                       "candidate_accuracy": 0.7, "difference": -0.136, "confidence": 0.95,
                       "ci_low": -0.2, "ci_high": -0.05, "mcnemar_p": 0.01, "examples": 39,
                       "class_recall": {"a": {"baseline": 0.9}, "b": {"baseline": 0.71}}},
        "label_vocabulary": ["b", "a"]}))
    (blessing / artifacts.ModelBlessing.FILE).write_text(json.dumps({
        "blessed": True, "reason": "all checks passed", "checks": [
            {"check": "accuracy (overall)", "source": "tfma", "value": 0.7,
             "bound": {"min": 0.5}, "verdict": "pass"}]}))
    steps = [SimpleNamespace(step="evaluate", status="ran", seconds=1.0, decision="x",
                             outputs={"evaluation": str(evaluation),
                                      "blessing": str(blessing)})]
    page = open(report.write(str(tmp_path / "run"), "r1", "succeeded", steps)).read()
    assert "Warning: accuracy is 13.6% below the baseline m:1" in page
    assert "<td>&gt;=\xa00.5</td>" in page                    # not raw JSON, on one line
    assert page.index("<td>overall</td>") < page.index("<td>label=b</td>")
    assert page.index("<td>a</td>") < page.index("<td>b</td>")   # classes by name
    assert "<td class='fail num'>-0.410</td>" in page          # a 41-point recall drop
    assert "<td class='num'>0.700</td>" in page                # rates to 3 decimals
    assert "<td class='num'>39</td>" in page                   # a count, not 39.0000


def test_precision_recall_points_match_scikit_learn():
    """Precision-recall per class from the evaluator's histograms: the average
    precision agrees with scikit-learn's on the unbinned scores."""
    from sklearn import metrics

    from components.evaluation import scoring

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 900)
    logits = rng.normal(size=(900, 3)) + 1.2 * np.eye(3)[truth]
    probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    curves = scoring.curve_histograms(probs, list(truth))
    for index in range(3):
        recall, precision, average = gate.pr_points(curves["positive"][index],
                                                    curves["negative"][index])
        assert recall[0] == 0 and recall[-1] == pytest.approx(1.0)
        assert precision[-1] == pytest.approx((truth == index).mean())   # threshold 0
        assert average == pytest.approx(
            metrics.average_precision_score(truth == index, probs[:, index]), abs=5e-3)
    assert gate.pr_points(np.zeros(10), np.ones(10)) is None         # no positives


class _Page:
    """report.html parsed: headings, tables' cells, images, code pointers."""

    def __init__(self, text):
        from html.parser import HTMLParser

        page = self
        self.headings, self.cells, self.images, self.codes = [], [], [], []
        self.tuned_rows = []

        class Parser(HTMLParser):
            stack = []

            def handle_starttag(self, tag, attrs):
                attrs = dict(attrs)
                self.stack.append((tag, attrs))
                if tag == "img":
                    page.images.append(attrs["src"])

            def handle_endtag(self, tag):
                while self.stack and self.stack.pop()[0] != tag:
                    pass

            def handle_data(self, data):
                tags = [t for t, _ in self.stack]
                if tags and tags[-1] in ("h1", "h2", "h3"):
                    page.headings.append(data.strip())
                elif tags and tags[-1] in ("td", "th"):
                    page.cells.append(data.strip())
                    if any(a.get("class") == "tuned" for t, a in self.stack if t == "tr"):
                        page.tuned_rows.append(data.strip())
                elif tags and tags[-1] == "code":
                    page.codes.append(data.strip())

        Parser().feed(text)


def test_report_decides_a_promotion(tmp_path):
    """The report shows both confusion matrices (classes by name, each in its own
    vocabulary's order before), ROC, calibration and precision-recall from the stored
    histograms, the recorded config with the tuned values marked, and the TensorBoard
    and tfma.load_eval_result pointers; self-contained (every image embedded)."""
    import io
    from types import SimpleNamespace

    from PIL import Image

    from components.evaluation import scoring
    from pipeline.report import html as report

    evaluation, blessing, model = (tmp_path / n for n in ("evaluation", "blessing", "model"))
    for folder in (evaluation, blessing, model):
        folder.mkdir()
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 3, 120)
    probs = np.eye(3)[truth] * 0.6 + rng.uniform(size=(120, 3)) * 0.4
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    curves = scoring.curve_histograms(probs, list(truth))
    np.savez(evaluation / artifacts.ModelEvaluation.CURVES, positive=curves["positive"],
             negative=curves["negative"])
    (evaluation / artifacts.ModelEvaluation.FILE).write_text(json.dumps({
        "metrics": {"slices": {"overall": {"accuracy": 0.925, "example_count": 120.0}},
                    "per_class": {"cat": {"precision": 0.9, "recall": 1.0}},
                    "confusion": [[40, 1, 0], [2, 35, 3], [1, 2, 36]]},   # dog, cat, fox
        "label_vocabulary": ["dog", "cat", "fox"],
        "baseline": "pets:3",
        "baseline_metrics": {"slices": {"overall": {"accuracy": 0.9}},
                             "confusion": [[37, 2, 1], [1, 36, 4], [3, 1, 35]]},
        "baseline_vocabulary": ["cat", "fox", "dog"],
        "tfma_model_name": "candidate",
        "comparison": {"baseline": "pets:3", "baseline_accuracy": 0.9,
                       "candidate_accuracy": 0.925, "difference": 0.025, "confidence": 0.95,
                       "ci_low": -0.01, "ci_high": 0.06, "mcnemar_p": 0.2, "examples": 120,
                       "class_recall": {}}}))
    (blessing / artifacts.ModelBlessing.FILE).write_text(json.dumps(
        {"blessed": True, "reason": "all checks passed", "checks": []}))
    (model / artifacts.Model.FILE).write_text(json.dumps({"loss": [0.9, 0.5],
                                                        "accuracy": [0.6, 0.8]}))
    (model / artifacts.MANIFEST_NAME).write_text(json.dumps({"properties": {
        "kind": "cnn", "trainable_params": 4914, "epochs": 2, "strategy": "default",
        "hyperparameters": {"best": {"model.dropout": 0.1}}}}))
    steps = [SimpleNamespace(step="train", status="ran", seconds=3.25, decision="x",
                             outputs={"trained_model": str(model)}),
             SimpleNamespace(step="evaluate", status="ran", seconds=1.0, decision="x",
                             outputs={"evaluation": str(evaluation), "blessing": str(blessing)})]
    config = {"model": {"kind": "cnn", "dropout": 0.25, "hidden_units": [64]},
              "train": {"epochs": 2, "optimizer": {"name": "adam", "learning_rate": 0.01}}}
    run_dir = tmp_path / "run"
    page = _Page(open(report.write(str(run_dir), "r1", "succeeded", steps,
                                   config=config)).read())

    for heading in ("Blessing", "Evaluation", "Training", "Config", "Look further",
                    "Confusion matrices: this run's model and the baseline",
                    "ROC and calibration", "Precision-recall"):
        assert heading in page.headings, heading
    assert page.headings.index("Config") > page.headings.index("Training")
    assert "3.2" in page.cells and "0.925" in page.cells and "120" in page.cells
    assert "1.000" in page.cells                                 # a rate of 1, not a count
    assert ["dropout", "0.1 (tuned; config 0.25)"] == page.tuned_rows
    assert "optimizer.learning_rate" in page.cells and "[64]" in page.cells
    assert f"tensorboard --logdir {model / 'logs'}" in page.codes
    assert ("import tensorflow_model_analysis as tfma; result = tfma.load_eval_result("
            f"'{evaluation / 'tfma'}', model_name='candidate')") in page.codes
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert len(page.images) == 4      # training curves, confusion, ROC+calibration, PR
    for name in ("confusion_matrix", "roc_calibration", "precision_recall"):
        assert (run_dir / f"{name}.png").is_file()
    width, height = Image.open(io.BytesIO((run_dir / "confusion_matrix.png").read_bytes())).size
    assert width > 1.6 * height                                     # two matrices side by side

    # the matrices in class-name order, each from its own vocabulary
    from pipeline.report.plots import _confusion_data

    data = _confusion_data(artifacts.ModelEvaluation.read(str(evaluation)))
    assert data["classes"] == ["cat", "dog", "fox"]
    assert data["confusion"][0] == [35, 2, 3]          # true cat: cat, dog, fox
    assert data["baseline"][0] == [37, 1, 2] and data["baseline_title"] == "baseline pets:3"


def test_a_failed_check_reads_its_bound_in_words():
    """The blessing's reason (printed as NOTHING PUSHED: ...) says '(needs >= 0.5)',
    not a JSON object."""
    blessed, reason = evaluate._verdict(True, [
        {"check": "accuracy (overall)", "value": 0.41234, "bound": {"min": 0.5},
         "verdict": "fail"},
        {"check": "accuracy change vs m:1", "value": -0.2, "bound": {"min": -0.01},
         "verdict": "fail"}])
    assert not blessed
    assert reason == ("accuracy (overall): 0.4123 (needs >= 0.5); accuracy change vs m:1: "
                      "-0.2 (needs >= -0.01)")
