"""``eport serve``: the CA and the token service under gunicorn, in one process tree.

Each worker builds both Flask apps (no engine is shared across a fork) and routes by
path: ``/auth/…``, ``/.well-known/…`` and the portal (``/portal/…``) to the token service,
everything else to the CA.
Production may run them apart (``ca.app:create_app`` and ``authsvc.app:create_app``).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication

from authsvc.config import AuthConfig
from authsvc.proxy import TrustedProxies
from ca.config import CAConfig
from cli.client import CLIError

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
AUTH_PREFIXES = ("/auth/", "/.well-known/", "/portal")


def combined(ca_app: WSGIApp, auth_app: WSGIApp) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        target = auth_app if path.startswith(AUTH_PREFIXES) else ca_app
        return target(environ, start_response)

    return app


class EPortServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn with our app factories; each worker builds its own apps."""

    def __init__(self, cfg: CAConfig, auth_cfg: AuthConfig | None, options: dict[str, Any]) -> None:
        self.cfg_ca = cfg
        self.cfg_auth = auth_cfg
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from ca.app import create_app

        ca_app = create_app(self.cfg_ca)
        app: WSGIApp
        if self.cfg_auth is None:
            app = ca_app
        else:
            from authsvc.app import create_app as create_auth

            app = combined(ca_app, create_auth(self.cfg_auth))
        # The apps' long-lived objects (policies, pkilint's validator tree, key rings,
        # SQLAlchemy metadata) never become garbage: keep the cyclic collector from
        # walking them again and again under load (measured: 2-3% more enrollments/s).
        # What a reload replaces later is still freed by reference counting; only a
        # reference cycle among those start-up objects would stay (bounded, per reload).
        gc.collect()
        gc.freeze()
        return app


def write_problem(sock: Any, status: int, reason: str, mesg: str) -> None:
    """What gunicorn sends for a request it refuses before any app sees it (a request line
    or header over its limits, framing it cannot read), as RFC 9457 problem+json like
    every other error of both services, in place of its HTML page (``gunicorn.util.
    write_error``, whose arguments these are). ``mesg`` is gunicorn's own account, which
    may quote the client's bytes: it goes out as JSON-escaped ASCII, shortened."""
    if status == 431:
        detail = "the request's header fields are larger than this server reads"
    elif status >= 500:
        detail = "the server failed" if status == 500 else mesg[:200]
    else:
        said = mesg if len(mesg) <= 200 else mesg[:200] + "..."
        detail = f"the request is not HTTP/1.1 this server reads: {said}"
    body = json.dumps(
        {"type": "about:blank", "title": reason, "status": status, "detail": detail}
    ).encode("ascii")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def _problem_errors(_worker: Any) -> None:
    """gunicorn's ``post_worker_init`` hook: its refusals as problem+json, in this worker."""
    gunicorn_util.write_error = write_problem


def run(
    cfg: CAConfig, auth_cfg: AuthConfig | None, host: str, port: int, workers: int, threads: int
) -> None:
    EPortServer(
        cfg,
        auth_cfg,
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread" if threads > 1 else "sync",
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "timeout": 60,
            "graceful_timeout": 5,
            "post_worker_init": _problem_errors,
            # gunicorn believes X-Forwarded-Proto (the request's scheme) from loopback
            # unless told otherwise; here only from the configured proxies, as every other
            # forwarded header (none configured: from no one)
            "forwarded_allow_ips": ",".join(forwarded_from(cfg, auth_cfg)),
        },
    ).run()


def forwarded_from(cfg: CAConfig, auth_cfg: AuthConfig | None) -> list[str]:
    """The networks whose forwarded scheme gunicorn may believe: those either service
    trusts (``EPORT_TRUSTED_PROXIES``, ``EPORT_AUTH_TRUSTED_PROXIES``), read as the token
    service reads them (:class:`authsvc.proxy.TrustedProxies`: 10.1.2.3/8 is 10.0.0.0/8,
    which gunicorn would refuse as written); one front proxy serves both."""
    both = (*cfg.trusted_proxies, *(auth_cfg.trusted_proxies if auth_cfg else ()))
    try:
        networks = TrustedProxies(both).networks
    except ValueError as exc:
        raise CLIError(f"a trusted proxy is not an address or a network: {exc}") from None
    return list(dict.fromkeys(str(n) for n in networks))
