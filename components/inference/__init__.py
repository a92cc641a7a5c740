"""Inference: the serving-signature client, Beam's RunInference handler, batch prediction rows, TF Serving's config and warmup records."""
