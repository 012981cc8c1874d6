"""``eport serve``: the CA and the token service under gunicorn, in one process tree.

Each worker builds both Flask apps (no engine is shared across a fork) and routes by
path: ``/auth/…``, ``/.well-known/…`` and the portal (``/portal/…``) to the token service,
everything else to the CA. ``eport serve --only ca`` and ``--only auth`` run one of them
alone, as production may (on two hosts, a front proxy routing the same paths).
"""

from __future__ import annotations

import gc
import ipaddress
import json
import math
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from werkzeug.http import HTTP_STATUS_CODES

from authsvc.config import AuthConfig
from authsvc.proxy import TrustedProxies
from ca.config import CAConfig
from cli.client import CLIError

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
AUTH_PREFIXES = ("/auth/", "/.well-known/", "/portal")


def combined(ca_app: WSGIApp, auth_app: WSGIApp) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("//"):  # as Werkzeug's routing reads it (leading slashes merged):
            path = "/" + path.lstrip("/")  # //auth/health went to the CA (HTTP edges, s27)
        target = auth_app if path.startswith(AUTH_PREFIXES) else ca_app
        return target(environ, start_response)

    return app


class EPortArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, which checks the policies before a reload (SIGHUP) replaces
    the workers: new workers read ``policies/`` again as they build the apps, and one that
    cannot load them failed to boot and took the whole server down (the master exits on
    a worker's boot error). A set the start would refuse is refused here, in one log line
    naming the file and the key; the running workers keep serving with what they loaded."""

    def handle_hup(self) -> None:
        try:
            check_policies(self.app.cfg_ca, self.app.cfg_auth, serve_ca=self.app.serve_ca)
        except Exception as exc:  # any failure at all: keep the workers that serve
            said = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
            self.log.error(
                "eport: reload (SIGHUP) refused, the workers keep the policies they loaded: %s",
                said,
            )
            return
        for line in issuer_warnings(self.app.cfg_ca) if self.app.serve_ca else ():
            self.log.warning("eport: %s", line)
        super().handle_hup()


def check_policies(cfg: CAConfig, auth_cfg: AuthConfig | None, *, serve_ca: bool = True) -> None:
    """The checks ``eport serve`` makes of the policies before it serves: the files of
    the services it serves load (:class:`~ca.errors.PolicyError` names the file and the
    key) and, with the CA, every profile's template lints (:class:`~ca.errors.LintFailed`)."""
    from ca.app import prelint_templates
    from ca.policy import load_policies

    if not serve_ca:  # the token service alone: its own members.toml names the agencies
        assert auth_cfg is not None
        cfg_dir = auth_cfg.policies_dir
    else:
        cfg_dir = cfg.policies_dir
    members = load_policies(cfg_dir).members.members
    if auth_cfg is not None:
        from authsvc.policy import load_access_policy

        load_access_policy(auth_cfg.policies_dir, {m.id for m in members})
    if serve_ca:
        prelint_templates(cfg)


BOOT_RETRY_SECONDS = 2.0
"""How long a worker that found the database unavailable as it booted waits before it
exits for a fresh one (the master starts the next at once)."""


class EPortServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn with our app factories; each worker builds its own apps: both, the CA
    alone (``auth_cfg`` None) or the token service alone (``serve_ca`` False; ``cfg``
    then gives only the server's own settings, such as the database answer deadline)."""

    def __init__(
        self,
        cfg: CAConfig,
        auth_cfg: AuthConfig | None,
        options: dict[str, Any],
        *,
        serve_ca: bool = True,
    ) -> None:
        if not serve_ca and auth_cfg is None:
            raise ValueError("nothing to serve")
        self.cfg_ca = cfg
        self.cfg_auth = auth_cfg
        self.serve_ca = serve_ca
        self.options = options
        super().__init__()

    def run(self) -> None:
        """:meth:`BaseApplication.run` with :class:`EPortArbiter`."""
        try:
            EPortArbiter(self).run()
        except RuntimeError as exc:
            raise CLIError(str(exc)) from None

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        """Each worker's apps. A database that cannot be used while a worker boots (a
        worker restarted during an outage): one log line, a pause, and the worker exits
        (code 1), for the master to start a fresh one. A worker that failed to boot made
        gunicorn's master stop the whole server; retrying in this process would keep what
        each attempt had started (the refresher thread, the connection pools)."""
        import logging
        import sys
        import time

        from ca.errors import PolicyError, database_unavailable_cause

        try:
            return self._load()
        except PolicyError as exc:
            # Only after a reload (SIGHUP) was refused for them: the start checks them
            # before any worker. The other workers keep serving with what they loaded.
            logging.getLogger("eport.serve").error(
                "worker booting: the policies cannot be loaded (%s); fix them, a new worker "
                "tries again in %.0f s",
                exc.detail,
                BOOT_RETRY_SECONDS,
            )
            time.sleep(BOOT_RETRY_SECONDS)
            sys.exit(1)  # not gunicorn's boot error (3), which stops the master
        except Exception as exc:
            cause = database_unavailable_cause(exc)
            if cause is None:
                raise
            why = " ".join(str(cause).split())[:200]
            logging.getLogger("eport.serve").error(
                "worker booting: the database is unavailable (%s: %s); a new worker tries "
                "again in %.0f s",
                type(cause).__name__,
                why,
                BOOT_RETRY_SECONDS,
            )
            time.sleep(BOOT_RETRY_SECONDS)
            sys.exit(1)  # not gunicorn's boot error (3), which stops the master

    def _load(self) -> Any:
        from ca.app import create_app

        urls = [self.cfg_ca.sqlalchemy_url] if self.serve_ca else []
        if self.cfg_auth is not None:
            urls.append(self.cfg_auth.sqlalchemy_url)
        seconds = self.cfg_ca.database_answer_seconds
        if seconds > 0 and any(u.startswith("postgresql") for u in urls):
            from ca.db import install_answer_deadline

            install_answer_deadline(seconds)  # this worker's connections only
        app: WSGIApp
        if not self.serve_ca:
            from authsvc.app import create_app as create_auth

            assert self.cfg_auth is not None
            app = create_auth(self.cfg_auth)
        elif self.cfg_auth is None:
            app = create_app(self.cfg_ca)
        else:
            from authsvc.app import create_app as create_auth

            app = combined(create_app(self.cfg_ca), create_auth(self.cfg_auth))
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
    # gunicorn passes "Bad Request" with its 501 for a transfer coding it does not know:
    # the status line and title follow the status.
    reason = HTTP_STATUS_CODES.get(status, reason)
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


def worker_timeout(cfg: CAConfig) -> int:
    """gunicorn's worker timeout: 60 s, or longer than the database answer deadline when
    that is set longer, so that a worker waiting on a silent PostgreSQL answers its 503
    rather than being killed first (a sync worker sends no heartbeat while it waits)."""
    return max(60, math.ceil(cfg.database_answer_seconds) + 15)


def run(
    cfg: CAConfig,
    auth_cfg: AuthConfig | None,
    host: str,
    port: int,
    workers: int,
    threads: int,
    *,
    serve_ca: bool = True,
) -> None:
    forwarded = forwarded_from(cfg if serve_ca else None, auth_cfg)
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
            "timeout": worker_timeout(cfg),
            "graceful_timeout": 5,
            "post_worker_init": _problem_errors,
            # gunicorn believes X-Forwarded-Proto (the request's scheme) from loopback
            # unless told otherwise; here only from the configured proxies, as every other
            # forwarded header (none configured: from no one)
            "forwarded_allow_ips": ",".join(forwarded),
        },
        serve_ca=serve_ca,
    ).run()


def forwarded_from(cfg: CAConfig | None, auth_cfg: AuthConfig | None) -> list[str]:
    """The networks whose forwarded scheme gunicorn may believe: those either service
    trusts (``EPORT_TRUSTED_PROXIES``, ``EPORT_AUTH_TRUSTED_PROXIES``), read as the token
    service reads them (:class:`authsvc.proxy.TrustedProxies`: 10.1.2.3/8 is 10.0.0.0/8,
    which gunicorn would refuse as written); one front proxy serves both. ``cfg`` None: the
    token service alone."""
    both = (*(cfg.trusted_proxies if cfg else ()), *(auth_cfg.trusted_proxies if auth_cfg else ()))
    try:
        networks = TrustedProxies(both).networks
    except ValueError as exc:
        raise CLIError(f"a trusted proxy is not an address or a network: {exc}") from None
    return list(dict.fromkeys(str(n) for n in networks))


WIDE_PREFIX = {4: 8, 6: 32}
"""A trusted proxy network shorter than this (more than a /8 of IPv4, a /32 of IPv6) is
warned about at start: every address in it may forward a client certificate."""


def start_warnings(
    cfg: CAConfig, auth_cfg: AuthConfig | None, host: str, *, serve_ca: bool = True
) -> list[str]:
    """What ``eport serve`` warns about as it starts (one line each): a listening address
    other than loopback (plain HTTP), very wide trusted proxy networks, profiles that name
    an issuing CA the CA does not have (``serve_ca`` False: the token service alone, whose
    host may have no CA files but the public ones)."""
    lines: list[str] = []
    if not _loopback(host):
        lines.append(
            f"listening on {host}, not a loopback address, over plain HTTP: certificates, "
            "tokens and session cookies cross the network in the clear; put a TLS proxy in "
            "front (EPORT_TRUSTED_PROXIES) and listen on 127.0.0.1"
            + (
                ". With --dev, anyone who reaches it can use the development CA"
                if cfg.dev and serve_ca
                else ""
            )
        )
    both = (
        *(cfg.trusted_proxies if serve_ca else ()),
        *(auth_cfg.trusted_proxies if auth_cfg else ()),
    )
    for entry in dict.fromkeys(both):
        network = ipaddress.ip_network(entry.strip(), strict=False)
        if network.prefixlen < WIDE_PREFIX[network.version]:
            lines.append(
                f"the trusted proxies (EPORT_TRUSTED_PROXIES, EPORT_AUTH_TRUSTED_PROXIES) "
                f"include {network} ({network.num_addresses} addresses): each may forward a "
                "client certificate header and log in as its holder"
            )
    if not serve_ca:
        return lines
    lines += issuer_warnings(cfg)
    moved = status_base_moved(cfg)
    if moved is not None:
        lines.append(moved)
    return lines


def status_base_moved(cfg: CAConfig) -> str | None:
    """A warning when the issuing CA certificates name another status address (their CRL
    distribution point) than the one new certificates would get: EPORT_PUBLIC_BASE_URL
    (or EPORT_STATUS_BASE_URL) unset or changed since ``eport ca init``, so that leaf
    certificates would point relying parties at an internal or stale address."""
    from cryptography import x509

    from ca import hierarchy

    issuers = sorted((hierarchy.ca_dir(cfg.data_dir) / "issuers").glob("*.crt"))
    if not issuers:
        return None
    try:
        cert = x509.load_pem_x509_certificate(issuers[0].read_bytes())
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        named = [
            n.value
            for p in points
            for n in (p.full_name or ())
            if isinstance(n, x509.UniformResourceIdentifier)
        ]
    except (ValueError, x509.ExtensionNotFound):
        return None
    ours = cfg.certificate_base_url.rstrip("/") + "/crl/"
    if not named or any(url.startswith(ours) for url in named):
        return None
    return (
        f"the CA's certificates name {named[0]} for status, but certificates issued now "
        f"would name {ours}…: set EPORT_PUBLIC_BASE_URL (or EPORT_STATUS_BASE_URL) to the "
        "address the CA was made with"
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def issuer_warnings(cfg: CAConfig) -> list[str]:
    """Profiles naming an issuing CA this CA does not have (their enrollments would be
    refused with a 404: a typo, or an ISSUE-INTERMEDIATE ceremony still to run); and in
    a development CA, issuing CAs made for an id that is not one of the usual ones, which
    a typo in a profile's ``issuer`` makes without a word."""
    from ca import hierarchy
    from ca.policy import EVERY_ISSUER, load_policies

    issuers_dir = hierarchy.ca_dir(cfg.data_dir) / "issuers"
    if not issuers_dir.is_dir():
        return []
    known = {crt.stem for crt in issuers_dir.glob("*.crt")}
    try:
        active = json.loads((issuers_dir / hierarchy.ACTIVE_FILE).read_text())
        known |= {str(alias) for alias in active}
    except (OSError, ValueError, TypeError):
        pass
    named: dict[str, list[str]] = {}
    for p in load_policies(cfg.policies_dir).profiles.values():
        if not p.ca and p.issuer != EVERY_ISSUER:
            named.setdefault(p.issuer, []).append(p.name)
    where = Path(cfg.policies_dir) / "profiles"
    lines: list[str] = []
    for issuer, names in sorted(named.items()):
        listed = ", ".join(f"{where}/{n}.toml" for n in sorted(names))
        if issuer not in known:
            lines.append(
                f"{listed}: issuer: this CA has no issuing CA {issuer!r} (it has: "
                f"{', '.join(sorted(known))}); enrollments for these profiles are refused "
                "until an ISSUE-INTERMEDIATE ceremony makes it"
            )
        elif cfg.dev and issuer not in hierarchy.ISSUING_NAMES:
            lines.append(
                f"{listed}: issuer: the development CA has an issuing CA {issuer!r} for these "
                f"profiles, not one of the usual {', '.join(sorted(hierarchy.ISSUING_NAMES))} "
                "(a typo?)"
            )
    return lines
