"""The console's routes (FastAPI, server-rendered pages) and its actions. An action
calls the function its CLI command calls (`pipeline.cli.common.promote`, `rollback`,
`end_canary`): the same checks, the same ledger entry, the same Vertex AI sync."""

from __future__ import annotations

import os
import secrets
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from components.errors import ConfigError, ImgpipeError, RegistryError
from components.registry.versions import Registry
import pipeline.cli.common as common
from pipeline.ui import models as model_pages
from pipeline.ui import runs as run_pages
from pipeline.ui import serving as serving_pages
from pipeline.ui.layout import esc, page
from pipeline.ui.security import COOKIE, Guard

MAX_FORM_BYTES = 64 * 1024
# the report is the run's own static page: its inline style and embedded images only
REPORT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PAGE_POLICY = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
               "frame-src 'self'; form-action 'self'; frame-ancestors 'self'")


@dataclass
class Console:
    """What every route reads: the runs folder, the registry, the guard."""

    runs_dir: str
    registry: Registry
    guard: Guard
    cards: model_pages.Cards
    logs: serving_pages.LogCache
    notes: "OrderedDict[str, str]"
    lock: threading.Lock

    def note(self, text: str) -> str:
        """Keeps a line to show after the redirect that follows an action; its key."""
        key = secrets.token_urlsafe(9)
        with self.lock:
            self.notes[key] = text
            while len(self.notes) > 200:
                self.notes.popitem(last=False)
        return key

    def take(self, key: str | None) -> str | None:
        with self.lock:
            return self.notes.pop(key, None) if key else None


def _html(title: str, body: str, section: str, status: int = 200, note: str | None = None,
          error: str | None = None) -> HTMLResponse:
    return HTMLResponse(page(title, body, section, note, error), status_code=status,
                        headers={"Content-Security-Policy": PAGE_POLICY,
                                 "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "same-origin", "Cache-Control": "no-store"})


def _error(status: int, message: str, section: str = "") -> HTMLResponse:
    return _html("Not here" if status == 404 else "Refused" if status in (400, 403, 409)
                 else "Error", "<p><a href='/runs'>runs</a> · <a href='/models'>models</a></p>",
                 section, status, error=message)


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ConfigError(f"the form is {len(body):,} bytes; at most {MAX_FORM_BYTES:,}.")
    parsed = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"),
                                   keep_blank_values=True)
    return {key: values[-1] for key, values in parsed.items()}


def _int(text: Any, default: int = 1) -> int:
    try:
        return int(str(text))
    except (TypeError, ValueError):
        return default


def build(runs_dir: str, registry: Registry, guard: Guard) -> FastAPI:
    """The console's app over `runs_dir` and `registry`."""
    app = FastAPI(title="imgpipe ui", docs_url=None, redoc_url=None, openapi_url=None)
    console = Console(runs_dir, registry, guard, model_pages.Cards(),
                      serving_pages.LogCache(), OrderedDict(), threading.Lock())
    app.state.console = console

    @app.middleware("http")
    async def guarded(request: Request, call_next: Callable) -> Response:
        if not guard.host_ok(request.headers):
            return PlainTextResponse(
                f"imgpipe ui answers only requests for its own address, not Host "
                f"{request.headers.get('host')!r}.", status_code=421)
        if request.url.path != "/login" and not guard.signed_in(request.headers,
                                                                 request.cookies):
            if request.method == "GET":
                target = urllib.parse.quote(request.url.path, safe="/")
                return RedirectResponse(f"/login?next={target}", status_code=303)
            return PlainTextResponse("imgpipe ui: this request needs the console's token "
                                     "(sign in, or send Authorization: Bearer TOKEN).",
                                     status_code=401)
        return await call_next(request)

    def shown(make: Callable[[], tuple[str, str]], section: str, request: Request,
              error: str | None = None, status: int = 200) -> HTMLResponse:
        try:
            title, body = make()
        except RegistryError as exc:
            return _error(500, str(exc), section)
        except ImgpipeError as exc:
            return _error(404, str(exc), section)
        except OSError as exc:
            return _error(500, f"cannot read it: {type(exc).__name__}: {exc}", section)
        return _html(title, body, section, status,
                     note=console.take(request.query_params.get("note")), error=error)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/runs", status_code=303)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(next: str = "/runs", failed: str = "") -> HTMLResponse:
        body = (f"<form class='box' method='post' action='/login'>"
                f"<input type='hidden' name='csrf' value='{esc(guard.csrf)}'>"
                f"<input type='hidden' name='next' value='{esc(next)}'>"
                "<label>token <input type='password' name='token' autofocus required></label>"
                "<button type='submit'>sign in</button></form>")
        return _html("Sign in", body, "", 401 if failed else 200,
                     error="That token is not this console's." if failed else None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await _form(request)
        problem = guard.csrf_problem(request.headers, form)
        if problem:
            return _error(403, problem)
        target = form.get("next") or "/runs"
        if not target.startswith("/") or target.startswith("//"):
            target = "/runs"
        if guard.token is None:
            return RedirectResponse(target, status_code=303)
        if not guard.token_matches(form.get("token", "")):
            return RedirectResponse(f"/login?failed=1&next={urllib.parse.quote(target)}",
                                    status_code=303)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, guard.session, httponly=True, samesite="strict")
        return response

    # --- runs ----------------------------------------------------------------------

    @app.get("/runs", response_class=HTMLResponse)
    def runs_list(request: Request, pipeline: str = "", status: str = "",
                  page: str = "1") -> HTMLResponse:
        if not os.path.isfile(run_pages.store(runs_dir).path):
            return _html(f"Runs in {runs_dir}", "<p class='muted'>No runs recorded here yet "
                         "(run a pipeline with <code>imgpipe run CONFIG</code>).</p>", "runs")
        return shown(lambda: run_pages.runs_list(runs_dir, pipeline, status, _int(page)),
                     "runs", request)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        def make() -> tuple[str, str]:
            found = run_pages.run_page(runs_dir, run_id)
            if found is None:
                raise ConfigError(f"no run {run_id!r} in {runs_dir}.")
            return found
        return shown(make, "runs", request)

    @app.get("/runs/{run_id}/report")
    def report(run_id: str) -> Response:
        if run_pages.store(runs_dir).get_run(run_id) is None:
            return _error(404, f"no run {run_id!r} in {runs_dir}.", "runs")
        path = run_pages.report_path(runs_dir, run_id)
        if path is None:
            return _error(404, f"run {run_id} wrote no report.", "runs")
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        return HTMLResponse(text, headers={"Content-Security-Policy": REPORT_POLICY,
                                           "X-Content-Type-Options": "nosniff"})

    # --- models --------------------------------------------------------------------

    @app.get("/models", response_class=HTMLResponse)
    def models_index(request: Request) -> HTMLResponse:
        return shown(lambda: model_pages.models_index(registry, console.cards), "models",
                     request)

    @app.get("/models/{name}", response_class=HTMLResponse)
    def model_page(request: Request, name: str, page: str = "1") -> HTMLResponse:
        return shown(lambda: model_pages.model_page(registry, console.cards, _known(name),
                                                    _int(page), guard.csrf), "models", request)

    @app.get("/models/{name}/compare", response_class=HTMLResponse)
    def compare(request: Request, name: str, left: str = "", right: str = "") -> HTMLResponse:
        a, b = model_pages.number_or_none(left), model_pages.number_or_none(right)
        if a is None or b is None:
            return _error(400, "compare needs two version numbers: ?left=N&right=M.", "models")
        return shown(lambda: model_pages.compare_page(registry, _known(name), a, b), "models",
                     request)

    @app.get("/models/{name}/{number}", response_class=HTMLResponse)
    def version_page(request: Request, name: str, number: int) -> HTMLResponse:
        return shown(lambda: model_pages.version_page(registry, console.cards, runs_dir,
                                                      _known(name), number, guard.csrf),
                     "models", request)

    def _known(name: str) -> str:
        if name not in registry.models():
            raise ConfigError(f"no model {name!r} in the registry {registry.root}.")
        return name

    async def act(request: Request, action: Callable[[dict[str, str]], tuple[str, str]],
                  on_error: Callable[[dict[str, str]], Callable[[], tuple[str, str]]],
                  section: str) -> Response:
        """Checks the CSRF token and the reason, runs `action` (which returns the line to
        show and the page to go to), and redirects there; a refusal shows the page it
        came from with the reason, status 409."""
        try:
            form = await _form(request)
        except ConfigError as exc:
            return _error(400, str(exc), section)
        problem = guard.csrf_problem(request.headers, form)
        if problem:
            return _error(403, problem, section)
        if not form.get("reason", "").strip():
            return shown(on_error(form), section, request,
                         error="give a reason: it is recorded in the audit log.", status=400)
        try:
            line, target = await run_in_threadpool(action, form)
        except ImgpipeError as exc:
            return shown(on_error(form), section, request, error=str(exc), status=409)
        return RedirectResponse(f"{target}?note={console.note(line)}", status_code=303)

    @app.post("/models/{name}/promote")
    async def promote(request: Request, name: str) -> Response:
        def action(form: dict[str, str]) -> tuple[str, str]:
            number = _int(form.get("version"), -1)
            entry = common.promote(registry, f"{_known(name)}:{number}", form.get("alias", ""),
                                   form["reason"].strip(), force=bool(form.get("force")),
                                   create=bool(form.get("create")))
            return _moved(name, entry), f"/models/{name}/{number}"

        def back(form: dict[str, str]) -> Callable[[], tuple[str, str]]:
            number = _int(form.get("version"), -1)
            return lambda: model_pages.version_page(registry, console.cards, runs_dir,
                                                    _known(name), number, guard.csrf)
        return await act(request, action, back, "models")

    @app.post("/models/{name}/rollback")
    async def rollback(request: Request, name: str) -> Response:
        def action(form: dict[str, str]) -> tuple[str, str]:
            entry = common.rollback(registry, _known(name), form.get("alias", ""),
                                    form["reason"].strip())
            return _moved(name, entry), f"/models/{name}"

        def back(form: dict[str, str]) -> Callable[[], tuple[str, str]]:
            return lambda: model_pages.model_page(registry, console.cards, _known(name), 1,
                                                  guard.csrf)
        return await act(request, action, back, "models")

    # --- serving -------------------------------------------------------------------

    @app.get("/serving", response_class=HTMLResponse)
    def serving_index(request: Request) -> HTMLResponse:
        return shown(lambda: serving_pages.serving_index(registry), "serving", request)

    @app.get("/serving/{name}", response_class=HTMLResponse)
    def serving_page(request: Request, name: str, window: str = serving_pages.DEFAULT_WINDOW,
                     candidate: str = "staging", baseline: str = "production",
                     alias: str = "production") -> HTMLResponse:
        return shown(lambda: serving_pages.serving_page(registry, _known(name), window,
                                                        candidate, baseline, alias,
                                                        guard.csrf, logs=console.logs),
                     "serving", request)

    @app.post("/serving/{name}/end-canary")
    async def end_canary(request: Request, name: str) -> Response:
        def action(form: dict[str, str]) -> tuple[str, str]:
            if form.get("decision") not in ("promote", "revert"):
                raise ConfigError("choose promote or revert to end the canary.")
            entry = common.end_canary(
                registry, _known(name), form.get("candidate", ""), form.get("baseline", ""),
                form["decision"] == "promote", form["reason"].strip(),
                (_int(form.get("candidate_version"), -1), _int(form.get("baseline_version"), -1)))
            return _moved(name, entry), f"/serving/{name}"

        def back(form: dict[str, str]) -> Callable[[], tuple[str, str]]:
            return lambda: serving_pages.serving_page(
                registry, _known(name), serving_pages.DEFAULT_WINDOW,
                form.get("candidate", "staging"), form.get("baseline", "production"),
                "production", guard.csrf, logs=console.logs)
        return await act(request, action, back, "serving")

    return app


def _moved(name: str, entry: dict[str, Any]) -> str:
    """The line an alias move shows, as `models promote` prints it."""
    if entry.get("unchanged"):
        return f"{name}@{entry['alias']} already points at version {entry['to']}; nothing " \
               "changed (not recorded)."
    before = "(none)" if entry["from"] is None else f"version {entry['from']}"
    return (f"{name}@{entry['alias']}: {before} -> version {entry['to']} ({entry['action']}, "
            "recorded in the audit log)"
            + (f"; also on Vertex AI ({entry['vertex_model']})" if entry.get("vertex_model")
               else "") + (f"; warning: {entry['warning']}" if entry.get("warning") else ""))
