"""Who may use the console, and how a state-changing request proves it came from the
console's own page.

- Bound to a loopback address, the console needs no token, but the Host header must
  name that address (a web page elsewhere cannot reach it through DNS rebinding).
- Bound to any other address it refuses to start without a token (`--token` or
  IMGPIPE_UI_TOKEN); then every request needs it: the `Authorization: Bearer` or
  `X-Imgpipe-Token` header, or the session cookie the login form sets (an HMAC of the
  token, never the token itself).
- Every POST carries the process's CSRF token (a hidden field of each form, or the
  `X-CSRF-Token` header) and, when the browser sends an Origin (or Referer), one of
  the same host and port as the request's Host.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import urllib.parse
from typing import Any

TOKEN_ENV = "IMGPIPE_UI_TOKEN"
COOKIE = "imgpipe_ui"
TOKEN_HEADER = "x-imgpipe-token"
CSRF_HEADER = "x-csrf-token"
MIN_TOKEN_LENGTH = 8


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def start_problem(host: str, token: str | None) -> str | None:
    """Why the console must not start on `host` with `token`; None when it may."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return (f"the token is {len(token)} characters long; give at least "
                f"{MIN_TOKEN_LENGTH} (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(24))'`).")
    if not is_loopback(host) and not token:
        return (f"--host {host} would let other machines reach the console and its actions; "
                f"give a token with --token or {TOKEN_ENV} (or keep the default --host "
                "127.0.0.1).")
    return None


class Guard:
    """The token and CSRF checks of one console process."""

    def __init__(self, token: str | None, hosts: set[str] | None = None):
        """`hosts`: the Host headers accepted (host:port); None accepts any (a console
        bound beyond loopback, where the token guards it)."""
        self.token = token or None
        self.hosts = hosts
        self.csrf = secrets.token_urlsafe(32)
        self.session = (hmac.new(self.token.encode(), b"imgpipe ui session",
                                 hashlib.sha256).hexdigest() if self.token else None)

    def host_ok(self, headers: Any) -> bool:
        return self.hosts is None or (headers.get("host") or "").lower() in self.hosts

    def signed_in(self, headers: Any, cookies: dict[str, str]) -> bool:
        """Whether the request carries the token (any request, when there is none)."""
        if self.token is None:
            return True
        bearer = headers.get("authorization") or ""
        given = bearer[7:] if bearer.lower().startswith("bearer ") else \
            headers.get(TOKEN_HEADER)
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        cookie = cookies.get(COOKIE)
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session.encode())

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(),
                                                              self.token.encode())

    def csrf_problem(self, headers: Any, form: dict[str, str]) -> str | None:
        """Why a state-changing request is refused as cross-site; None when it is not."""
        sent = form.get("csrf") or headers.get(CSRF_HEADER) or ""
        if not sent or not hmac.compare_digest(sent.encode(), self.csrf.encode()):
            return ("the form's CSRF token is missing or from another console process; "
                    "reload the page and submit again.")
        origin = headers.get("origin") or headers.get("referer")
        if origin is not None:
            where = urllib.parse.urlsplit(origin).netloc.lower() if origin != "null" else "null"
            if where != (headers.get("host") or "").lower():
                return (f"the request came from {origin}, not from this console "
                        f"({headers.get('host')}); submit the form from the console's own "
                        "page.")
        return None
