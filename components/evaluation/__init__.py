"""Evaluation: evaluate's Beam scoring job and the blessing gates."""
