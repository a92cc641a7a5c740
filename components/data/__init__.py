"""Data in: sources, built-in datasets, images, near-duplicates, data drops (spans) and ingest's checks, Beam graph, statistics and window."""
