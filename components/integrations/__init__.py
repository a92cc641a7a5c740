"""Managed services the pipeline pushes to: Vertex AI."""
