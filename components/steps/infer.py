"""Infer: batch predictions on unlabeled images with the model this run just pushed
(TFX's BulkInferrer), an optional step after push.

`infer.source` names the images: a folder (searched recursively), a CSV/JSONL manifest
with a `path` column, or a pattern with `{SPAN}` or `{YYYY}{MM}{DD}` (and `{VERSION}`),
of which the newest drop is read (`components/data/spans.py`). Files are listed and checked
as `imgpipe predict` checks them (`components/inference/predict.py`): a file without an image
extension in a folder, an unreadable or corrupt one gets an error row, never stops the
job; the rest are scored by the pushed version's `serving_images` signature through
Beam's RunInference with the pipeline's runner. The InferenceResult holds one row per
file and a summary (counts per predicted class, errors). Under the pipeline it runs
behind push's gates (a model not blessed, or that failed infra validation, leaves it
not run); given a record of nothing pushed, nothing is scored, and the summary says why.

Without `infer.source` the step is not part of the run at all (`pipeline/dag.py`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from components import artifacts
from components.inference import predict
from components.data import spans
from components.config.beam import BeamConfig
from components.config.infer import InferConfig
from components.contract import In, Out, Where, step
from components.errors import ConfigError


def source_files(infer: InferConfig) -> tuple[list[tuple[str, str | None]], str | None]:
    """What `infer.source` names, as `predict.list_inputs` lists it (each file, and
    why it is not read), and the label of the span read (None for a plain source)."""
    source = infer.source or ""
    label = None
    if spans.has_pattern(source):
        try:
            newest = spans.discover(spans.Pattern.parse(source))[-1]
        except ConfigError as exc:       # spans' words name data.source
            raise ConfigError(str(exc).replace("data.source", "infer.source", 1)) from None
        source, label = newest.path, newest.label
    return predict.list_inputs([source]), label


def external_inputs(infer: InferConfig) -> dict[str, str]:
    """The content of the files infer.source names (the newest span's, for a pattern):
    a new, changed or removed image reruns the step."""
    listed, label = source_files(infer)
    return {"infer_source": f"{label or ''} {predict.fingerprint(listed)}"}


def check(infer: InferConfig, where: Where) -> list[str]:
    """An `infer.source` the step could not read, found before training rather than
    after: a path that does not exist here, or from a pipeline's containers a path on
    this machine."""
    import os

    from components.io import fileio

    source = infer.source
    if not source:
        return []
    if not where.reaches(source):
        return [f"infer.source {source!r} is a path on this machine, which the pipeline's "
                "containers cannot read; copy the images to a bucket and use "
                "gs://BUCKET/..., or leave infer.source out."]
    if where.remote or fileio.is_remote(source):
        return []
    root = spans.Pattern.parse(source).root if spans.has_pattern(source) else source
    if root and not os.path.exists(root):
        return [f"infer.source {source!r}: {root} does not exist; fix infer.source, or "
                "leave it out (no infer step)."]
    return []


@step(beam=("runner",), external=external_inputs, check=check)
def run(pushed_model: In[artifacts.PushedModel], trained_model: In[artifacts.Model],
        infer: InferConfig, beam: BeamConfig,
        inference_result: Out[artifacts.InferenceResult]) -> dict[str, Any]:
    """Scores the files of `infer.source` with the version the push step recorded."""
    record = artifacts.PushedModel.read(pushed_model)
    listed, label = source_files(infer)
    where = infer.source + (f" ({label})" if label else "")
    summary: dict[str, Any] = {"source": infer.source, "span": label, "files": len(listed)}
    output = inference_result.file(artifacts.InferenceResult.PREDICTIONS)
    if not record.get("pushed"):
        reason = record.get("reason") or "nothing was pushed"
        summary.update(pushed=False, model=None, scored=0, errors=0, classes={},
                       reason=reason)
        predict.write_rows([], output)
        lines = [f"nothing scored: no model was pushed ({reason}); {len(listed)} file(s) "
                 f"in {where} left for the next pushed model"]
    else:
        model = f"{record['model_name']}:{record['version']}"
        paths = [path for path, why in listed if why is None]
        warning = predict.shape_warning(paths, trained_model.properties.get("image_shape"))
        rows = predict.with_unread(listed, predict.run_inference(
            record["path"], paths, beam, infer.batch_size, infer.top_k))
        predict.write_rows(rows, output, model)
        classes = Counter(row["class"] for row in rows if row.get("class") is not None)
        errors = sum(1 for row in rows if row.get("error"))
        summary.update(pushed=True, model=model, scored=len(rows) - errors, errors=errors,
                       classes=dict(sorted(classes.items())))
        top = ", ".join(f"{name} {count}" for name, count in classes.most_common(5))
        more = f" and {len(classes) - 5} more classes" if len(classes) > 5 else ""
        lines = [f"scored {len(rows) - errors} of {len(rows)} file(s) in {where} with "
                 f"{model}" + (f": {top}{more}" if top else ""),
                 f"{errors} file(s) not scored (their rows say why)" if errors
                 else "every file scored"] + ([f"warning: {warning}"] if warning else [])
    artifacts.InferenceResult.write(inference_result, summary)
    inference_result.properties = summary
    return {**summary, "lines": lines}
