"""A thin HTTP client of the CA API; problem documents become :class:`RemoteError`."""

from __future__ import annotations

import datetime
import json
from typing import Any

import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from ca.signedreq import SCHEME, sign_request

DEFAULT_SERVER = "http://127.0.0.1:8000"


class CLIError(Exception):
    """An error the CLI reports as one line and a non-zero exit."""


class RemoteError(CLIError):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        # RFC 9457 (the CA, the token service's APIs) or RFC 6749 §5.2 (its OAuth endpoints)
        detail = (
            problem.get("detail")
            or problem.get("error_description")
            or problem.get("title")
            or problem.get("error")
            or "request failed"
        )
        super().__init__(f"{detail} (HTTP {status})")


class Identity:
    """A certificate chain and its private key, used to sign privileged requests."""

    def __init__(
        self, chain: list[x509.Certificate], key: CertificateIssuerPrivateKeyTypes
    ) -> None:
        self.chain = chain
        self.key = key


class CAClient:
    def __init__(self, server: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.http = requests.Session()
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        identity: Identity | None = None,
    ) -> dict[str, Any]:
        """Send one request; ``path`` includes any query string, exactly as signed."""
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if identity is not None:
            token = sign_request(
                identity.key,
                identity.chain,
                method,
                path,
                data,
                datetime.datetime.now(datetime.UTC),
            )
            headers["Authorization"] = f"{SCHEME} {token}"
        try:
            resp = self.http.request(
                method, self.server + path, data=data or None, headers=headers, timeout=self.timeout
            )
        except requests.ConnectionError:
            raise CLIError(
                f"cannot reach the e-port server at {self.server} "
                "(is it running? set EPORT_SERVER or --server)"
            ) from None
        except requests.Timeout:
            raise CLIError(f"the server at {self.server} did not answer in time") from None
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if resp.status_code >= 400:
            if not isinstance(doc, dict):
                doc = {"detail": resp.text.strip()[:200] or resp.reason}
            raise RemoteError(resp.status_code, doc)
        if not isinstance(doc, dict):
            raise CLIError(f"unexpected answer from {self.server}{path}")
        return doc
