"""Names the compiled pipeline and the step containers must agree on: the run-time
pipeline parameters (and which of them may be unset) and the pin of a step's outside
inputs (a step's extra UI outputs are declared on the step: `@step(ui_outputs=...)`).
Imported by the compiler (`pipeline/kfp/parameters.py`, `step_builder.py`), which writes
them into the IR, and by `pipeline/kfp/entrypoint.py`, which reads them back inside the
container; it imports nothing."""

# Pipeline parameters a schedule can change without recompiling: name -> config key.
# Each task receives those of the sections it reads (`invoke.step_config`).
RUNTIME_PARAMETERS = {
    "data_source": "data.source",
    # a source with a span pattern: the window, as JSON ("latest", {"rolling": 7},
    # {"scheduled": "-1d"}, [..]); the resolve task turns a scheduled one into spans
    "data_spans": "data.spans",
    "train_epochs": "train.epochs",
    "train_batch_size": "train.batch_size",
    "learning_rate": "train.optimizer.learning_rate",
    "model_kind": "model.kind",
    "accuracy_min": "evaluate.thresholds.accuracy.min",
    "accuracy_max_drop": "evaluate.thresholds.accuracy.max_drop",
    "promote_to": "push.promote_to",
    "baseline_alias": "push.baseline_alias",
}
# Optional keys: '' / an absent threshold mean "not set".
OPTIONAL = ("push.promote_to",)
# The pin of what a step reads from outside the run (invoke.pin_outside_inputs).
EXTERNAL = "external"
