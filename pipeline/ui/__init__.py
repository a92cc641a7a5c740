"""`imgpipe ui`: a local web console over the runs folder and the registry.

    layout.py    the page shell, tables, pagination (its own stylesheet; no script)
    svg.py       line charts, the lineage graph, confusion matrices (inline SVG/HTML)
    runs.py      the runs list and a run's page (steps, lineage, report)
    models.py    versions, the metric-by-version plot, a version's page, compare
    serving.py   a served model's canary and monitor checks over time (request log)
    security.py  the token, the Host check and CSRF
    app.py       the routes and the actions (the CLI's own promote/rollback/end_canary)
    server.py    the listening socket and uvicorn

Only the command line imports this package (`pipeline/cli/ui.py`)."""
