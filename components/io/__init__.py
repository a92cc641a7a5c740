"""Storage: local and gs:// files, the GCS client, Beam pipeline options, TFRecord writing."""
