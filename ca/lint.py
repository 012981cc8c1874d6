"""Pre-issuance linting with pkilint (RFC 5280 certificate validators).

As Let's Encrypt does with zlint, the CA lints the *to-be-signed* certificate:
the TBSCertificate is first signed with a throwaway key of the issuing key's type,
linted, and only then signed for real. A finding of severity ERROR or FATAL
refuses the issuance with :class:`~ca.errors.LintFailed` and nothing is signed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

from pkilint import loader
from pkilint.pkix import certificate, extension, name
from pkilint.validation import ValidationFindingSeverity

from ca.errors import LintFailed
from ca.stopping import STOPS, Handler, signal_handlers

_BLOCKING = {ValidationFindingSeverity.ERROR, ValidationFindingSeverity.FATAL}


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    validator: str
    message: str | None

    def __str__(self) -> str:
        extra = f" ({self.message})" if self.message else ""
        return f"{self.severity} {self.code} [{self.validator}]{extra}"


class CertificateLinter:
    """pkilint's RFC 5280 certificate validator, built once (it is the costly part)."""

    def __init__(self) -> None:
        self._validator = certificate.create_pkix_certificate_validator_container(
            certificate.create_decoding_validators(
                name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
            ),
            [
                certificate.create_issuer_validator_container([]),
                certificate.create_validity_validator_container(),
                certificate.create_subject_validator_container([]),
                certificate.create_extensions_validator_container([]),
                certificate.create_spki_validator_container([]),
            ],
        )
        self._loader = loader.RFC5280CertificateDocumentLoader()
        # pkilint's validators hold per-run state on shared objects; one run at a time.
        self._lock = threading.Lock()

    def findings(self, der: bytes) -> list[Finding]:
        """Every finding pkilint reports for the DER certificate ``der``."""
        with self._lock, _signals_held():
            doc = self._loader.load_der_document(der, "tbs")
            results = self._validator.validate(doc.root)
        out = []
        for result in results:
            for fd in result.finding_descriptions:
                out.append(
                    Finding(
                        severity=fd.finding.severity.name,
                        code=fd.finding.code,
                        validator=str(result.validator),
                        message=fd.message,
                    )
                )
        return out

    def check(self, der: bytes) -> list[Finding]:
        """Raise :class:`LintFailed` on an ERROR or FATAL finding; return the rest."""
        found = self.findings(der)
        blocking = [f for f in found if f.severity in {s.name for s in _BLOCKING}]
        if blocking:
            raise LintFailed(
                "pre-issuance lint refused the certificate: " + "; ".join(map(str, blocking)),
                findings=[str(f) for f in blocking],
            )
        return found


_HELD = (signal.SIGINT, *STOPS)
"""Ctrl-C, and what the commands that make things handle as it (SIGTERM, SIGHUP): SIGHUP
was not held, and a terminal closed during a development CA's first start made the
decoder panic (a Rust backtrace, not the one line)."""


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP held back for the block and delivered right after it (in the main
    thread, the only one Python runs signal handlers in). pkilint's native DER decoder
    (pyasn1-fasder) calls back into Python and unwraps the result: an exception raised by
    a handler inside such a callback (KeyboardInterrupt, or a worker's SystemExit) made it
    panic, printing a Rust backtrace instead of the command's one line. A lint takes
    milliseconds, so the delay is not felt."""
    arrived: list[tuple[int, FrameType | None]] = []

    def note(signum: int, frame: FrameType | None) -> None:
        arrived.append((signum, frame))

    before: dict[signal.Signals, Handler] = {}
    try:
        with signal_handlers(_HELD, note) as before:
            yield
    finally:  # the earlier handlers are back: what arrived goes to them
        for signum, frame in arrived:
            handler = before[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
