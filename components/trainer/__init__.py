"""Training: model builders, the tf.distribute strategy, the input pipeline, fit loops and export."""
