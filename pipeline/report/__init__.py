"""The HTML run report and its plots."""
