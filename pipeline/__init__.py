"""Orchestration: config, the DAG, the local runner, metadata, registry and the CLI."""
