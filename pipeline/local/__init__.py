"""The local engine: runs the DAG in this process with caching and SQLite lineage."""
