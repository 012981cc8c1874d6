"""Benchmark (named hsm.py: a bench/pkcs11.py would shadow the python-pkcs11 package when
run as a script): signatures per second of a CA key in a PKCS#11 token (SoftHSM2) against
the same kind of key in memory, in the same run.

For each key type the script makes a SoftHSM2 token in a temporary directory, generates
a key pair in it (:func:`ca.pkcs11.generate`) and times :meth:`Pkcs11Signer.sign` over a
TBSCertificate-sized message (one thread, then N threads sharing the process's
session), next to :class:`ca.signer.SoftwareSigner` with a software key of the same
type. Every signature of the token run is checked once against the public key.

Usage: ``python bench/hsm.py [--seconds 3] [--threads 4] [--types p256,p384,ed25519]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ca.keys import KeyType
from ca.signer import SoftwareSigner

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-pin-1234"
MESSAGE = os.urandom(600)  # about the size of an end-entity TBSCertificate


def rate(sign: Callable[[bytes], bytes], seconds: float, threads: int = 1) -> float:
    """Signatures per second of ``sign`` over ``seconds`` with ``threads`` callers."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            sign(MESSAGE)
            n += 1
        counts[i] = n

    start = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--types", default="p256,p384,ed25519")
    args = ap.parse_args()
    util = shutil.which("softhsm2-util")
    if util is None or not Path(MODULE).exists():
        sys.exit("needs SoftHSM2 (apt-get install softhsm2)")
    tmp = Path(tempfile.mkdtemp(prefix="eport-bench-pkcs11-"))
    try:
        (tmp / "tokens").mkdir()
        conf = tmp / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tmp / 'tokens'}\nlog.level = ERROR\n")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(
            [util, "--init-token", "--free", "--label", "bench", "--so-pin", PIN, "--pin", PIN],
            check=True,
            capture_output=True,
        )
        from ca.pkcs11 import generate

        uri = f"pkcs11:token=bench?module-path={MODULE}&pin-value={PIN}"
        print(f"SoftHSM2 ({MODULE}), {args.seconds:.0f} s per cell, {os.cpu_count()} CPUs")
        print(
            f"{'key':<8} {'software/s':>11} {'token/s':>9} {'ratio':>6} "
            f"{'token/s x' + str(args.threads):>12}  {'software/s x' + str(args.threads):>14}"
        )
        for name in args.types.split(","):
            kt = KeyType(name)
            soft = SoftwareSigner(kt.generate())
            token = generate(uri, kt, f"bench {name}")
            _check(token.public_key(), token.sign(MESSAGE), kt)
            s1 = rate(soft.sign, args.seconds)
            t1 = rate(token.sign, args.seconds)
            tn = rate(token.sign, args.seconds, args.threads)
            sn = rate(soft.sign, args.seconds, args.threads)
            print(f"{name:<8} {s1:>11.0f} {t1:>9.0f} {t1 / s1:>6.2f} {tn:>12.0f}  {sn:>14.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(public: object, sig: bytes, kt: KeyType) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if isinstance(public, ec.EllipticCurvePublicKey):
        h = kt.hash_algorithm
        assert h is not None
        public.verify(sig, MESSAGE, ec.ECDSA(h))
    else:
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(sig, MESSAGE)


if __name__ == "__main__":
    main()
