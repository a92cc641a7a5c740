"""The pipeline's steps: plain functions over artifact directories, no orchestrator imports."""
