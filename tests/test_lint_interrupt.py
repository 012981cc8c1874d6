"""Ctrl-C while pkilint runs: pkilint's native DER decoder (pyasn1-fasder, Rust) calls
back into Python to build pyasn1 objects and unwraps the result, so a KeyboardInterrupt
raised in such a callback made it panic, printing a 139-line Rust backtrace to the
terminal of `eport ca init` (seen once in CI). The linter holds SIGINT and SIGTERM back
while it runs and delivers them right after (ca/lint.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading, time, random
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    import datetime
    from ca.lint import CertificateLinter

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "lint")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding
    der = cert.public_bytes(Encoding.DER)
    linter = CertificateLinter()
    done = threading.Event()

    def interrupt():
        rng = random.Random(7)
        while not done.is_set():
            time.sleep(rng.uniform(0.0005, 0.004))
            os.kill(os.getpid(), signal.SIGINT)

    # A KeyboardInterrupt only while a lint is under way: one arriving between lints (at
    # the loop's head, outside the try) is dropped rather than ending the child.
    in_lint = False

    def on_sigint(signum, frame):
        if in_lint:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    linted = interrupted = 0
    end = time.monotonic() + float(sys.argv[1])
    threading.Thread(target=interrupt, daemon=True).start()
    while time.monotonic() < end:
        try:
            in_lint = True
            linter.findings(der)
            in_lint = False
            linted += 1
        except KeyboardInterrupt:
            in_lint = False
            interrupted += 1
    done.set()
    print(linted, interrupted)
    """
)


def test_ctrl_c_during_lint_is_a_keyboard_interrupt_after_it_never_a_panic() -> None:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, "2.5"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert "panicked" not in res.stderr, res.stderr[:2000]
    assert res.returncode == 0, res.stderr[-2000:]
    linted, interrupted = map(int, res.stdout.split())
    # Interrupts arrived all along, and each one let the lint it arrived in finish.
    assert linted > 50 and interrupted > 50, res.stdout
