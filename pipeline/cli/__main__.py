"""`python -m pipeline.cli ...`: the `imgpipe` command."""

from pipeline.cli import _entry

_entry()  # pragma: no cover
