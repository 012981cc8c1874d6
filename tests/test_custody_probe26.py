"""Custody probe 26: `eport ca init` and `eport ca reshare` as the runbooks use them.

* A member taken out of members.toml (runbook 3) but still named by services.toml or
  access.toml: the re-share is refused before any passphrase, as `eport serve` would
  refuse the policies; once they are edited too, the re-share works and the server starts.
* A new share passphrase that is too short, or a current one that is wrong, is asked
  again at a terminal instead of losing everything typed before it.
* Too few (or repeated) share files are refused before any passphrase is asked.
* A CA whose keys are in a PKCS#11 token: the init says it starts unsealed, `eport ca
  unseal` says it needs none, and an init cut short destroys the keys it made in the token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.custody import Purpose, open_share_file
from tests.conftest import EPORT, REPO, base_env, free_port, need, start_server, stop
from tests.test_ca_init import MEMBERS, custodian_env, init_ca, start_sealed, unseal
from tests.test_cli_errors import at_terminal, default_sigint

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CA_PIN = "ca-pin-5d2e81"
SO_PIN = "so-pin-77a0c3"
LEFT = "forex"
"""The member that leaves in runbook 3's test."""
STAYING = tuple(m for m in MEMBERS if m != LEFT)


def _eport(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``eport ARGS`` with no terminal (stdin closed to input): a passphrase it would ask
    for is a refusal naming the variable, not a prompt."""
    return subprocess.run(
        [EPORT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res
    assert lines[0].startswith("eport: error: "), lines
    return lines[0]


def _old_passphrases(members: tuple[str, ...] = MEMBERS) -> dict[str, str]:
    return {f"EPORT_SHARE_PASSPHRASE_{m.upper()}": f"share passphrase of {m}" for m in members}


def _without_member(tmp: Path, *, services_too: bool) -> Path:
    """A copy of the repository's policies with :data:`LEFT` taken out of members.toml;
    with ``services_too``, out of services.toml and access.toml as well (its service run
    by tax from now on, its own access rule gone), as runbook 3 says."""
    policies = tmp / ("policies-edited" if services_too else "policies-members-only")
    shutil.copytree(REPO / "policies", policies)
    members = policies / "members.toml"
    text = members.read_text()
    text, n = re.subn(rf'\[\[member\]\]\nid = "{LEFT}"\n[^\[]*', "", text)
    assert n == 1
    members.write_text(text)
    if services_too:
        services = policies / "services.toml"
        services.write_text(services.read_text().replace(f'agency = "{LEFT}"', 'agency = "tax"'))
        access = policies / "access.toml"
        blocks = access.read_text().split("\n[[rule]]\n")
        kept = [b for b in blocks if f'agencies = ["{LEFT}"]' not in b]
        assert len(kept) == len(blocks) - 1
        access.write_text("\n[[rule]]\n".join(kept))
    return policies


def _share_args(out: Path, *members: str) -> list[str]:
    """``--share`` for each of ``members``' share files in the ceremony directory ``out``."""
    return [a for m in members for a in ("--share", str(out / "shares" / f"{m}.share"))]


def _custody(data: Path) -> bytes:
    return (data / "ca" / "custody.json").read_bytes()


# -- runbook 3: a custodian leaves ------------------------------------------------------------


@pytest.mark.slow  # an init, two re-shares, a server start and five unseals: 8-12 s
def test_a_member_taken_out_of_members_only_is_refused_before_any_passphrase(
    tmp_path: Path,
) -> None:
    """The re-share succeeded and the next `eport serve` refused its policies
    ("services.toml: service 'forex-verification': agency: unknown member agency
    'forex'"). Now the re-share loads the policies as `eport serve` does and refuses them
    in one line, before a passphrase is asked or a file written; with services.toml and
    access.toml edited too, it re-shares, the server starts on those policies and is
    unsealed by new shares; a further `eport ca unseal` says it is already unsealed."""
    data, out, _ = init_ca(tmp_path)
    shares = [
        a for m in ("customs", "tax", LEFT) for a in ("--share", str(out / "shares" / f"{m}.share"))
    ]
    before = _custody(data)
    half = _without_member(tmp_path, services_too=False)
    env = base_env()  # no passphrase anywhere: one asked for would be the refusal
    refused = _eport(
        "ca", "reshare", "--data-dir", str(data), "--out", str(tmp_path / "r1"),
        "--policies", str(half), *shares, env=env,
    )  # fmt: skip
    line = _one_error_line(refused)
    assert f"{half / 'services.toml'}: service 'forex-verification': agency: unknown member" in line
    assert "eport serve would refuse these policies" in line and "runbook 3" in line, line
    assert not (tmp_path / "r1").exists() and _custody(data) == before

    edited = _without_member(tmp_path, services_too=True)
    new_out = tmp_path / "r2"
    args = ["ca", "reshare", "--data-dir", str(data), "--out", str(new_out), *shares]
    args += ["--policies", str(edited), "--json"]
    for m in STAYING:
        pw = tmp_path / f"new-{m}.txt"
        pw.write_text(f"new passphrase of {m}\n")
        args += ["--custodian-passphrase", f"{m}={pw}"]
    done = _eport(*args, env={**base_env(), **_old_passphrases()})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["members"] == list(STAYING)

    # the server starts on those policies (it refused them before), sealed; new shares open it
    srv, proc, fp = start_sealed(tmp_path, data, extra_env={"EPORT_POLICIES_DIR": str(edited)})
    try:
        for m in ("customs", "tax", "inspection"):
            unseal(srv, new_out, m, fp, passphrase="new passphrase of {}")
        again = unseal(srv, new_out, "commerce", fp, passphrase="new passphrase of {}")
        assert json.loads(again.stdout) == {"sealed": False, "keys_in_token": False}
        text = srv.eport(
            "ca", "unseal", "--share", str(new_out / "shares" / "commerce.share"),
            "--fingerprint", fp, EPORT_SHARE_PASSPHRASE="new passphrase of commerce",
        ).stdout  # fmt: skip
        assert text.strip() == "The CA is already unsealed."
    finally:
        stop(proc)


def test_too_few_or_repeated_share_files_are_refused_before_any_passphrase(
    tmp_path: Path,
) -> None:
    """`--share a --share b` asked two custodians for their passphrases, then said "2 share
    files; re-sharing needs 3 custodians". The count, the members and the custody set
    are in the share files' clear headers: refused before anyone types anything."""
    data, out, _ = init_ca(tmp_path)
    share = {m: str(out / "shares" / f"{m}.share") for m in MEMBERS}
    before = _custody(data)
    cases = [
        (["customs", "tax"], "2 share files; re-sharing needs 3 custodians of custody set"),
        (["customs", "tax", "customs"], "the custodian of customs presented two share files"),
    ]
    for i, (members, needle) in enumerate(cases):
        args = ["ca", "reshare", "--data-dir", str(data), "--out", str(tmp_path / f"o{i}")]
        args += [a for m in members for a in ("--share", share[m])]
        line = _one_error_line(_eport(*args, env=base_env()))
        assert needle in line and "passphrase" not in line, line
        assert not (tmp_path / f"o{i}").exists()
    assert _custody(data) == before


# -- passphrases typed at a terminal ----------------------------------------------------------


def _terminal_env(**extra: str) -> dict[str, str]:
    return {**base_env(), "EPORT_OFFICER_PASSPHRASE": "officer passphrase", **extra}


def test_init_asks_a_too_short_share_passphrase_again_and_says_so(tmp_path: Path) -> None:
    """A share passphrase under 12 characters stopped the whole init ("must have at least
    12 characters", exit 1), losing what the custodians before had typed, while a
    mismatched confirmation was asked again. At a terminal it is asked again too, the
    prompt saying the minimum; from the environment it is still one line and exit 1.
    The summary tells each agency to set its own officer key passphrase."""
    data, out = tmp_path / "data", tmp_path / "ceremony"
    env = _terminal_env(
        EPORT_PUBLIC_BASE_URL=f"http://127.0.0.1:{free_port()}",
        **{f"EPORT_CUSTODIAN_PASSPHRASE_{m.upper()}": f"share passphrase of {m}" for m in STAYING},
    )
    prompt = b"(at least 12 characters): "
    typed = [
        (prompt, b"too short"),
        (b"Repeat for confirmation", b"too short"),
        (prompt, b"forex passphrase long enough"),  # asked again, after "Too short"
        (b"Repeat for confirmation", b"forex passphrase long enough"),
    ]
    args = ["ca", "init", "--data-dir", str(data), "--out", str(out)]
    text, code = at_terminal(args, env, typed=typed)
    assert code == 0, text
    assert "Too short: a share file's passphrase has at least 12 characters" in text, text
    assert "must have at least" not in text
    opened = open_share_file(
        (out / "shares" / f"{LEFT}.share").read_bytes(), b"forex passphrase long enough"
    )
    assert opened.member == LEFT and opened.share(Purpose.SEAL)
    assert "the server starts sealed until 3 custodians run `eport ca unseal`" in text
    assert f"eport key passwd {out}/officers/<member>/officer.key" in text, text
    assert "one officer passphrase, which whoever ran it knows" in text

    # from the environment (or a file): one line, nothing made
    short = _eport(
        "ca", "init", "--data-dir", str(tmp_path / "d2"), "--out", str(tmp_path / "o2"),
        env={**custodian_env(), f"EPORT_CUSTODIAN_PASSPHRASE_{LEFT.upper()}": "short"},
    )  # fmt: skip
    line = _one_error_line(short)
    assert f"the passphrase of {LEFT}'s share must have at least 12 characters" in line
    assert not (tmp_path / "d2").exists() and not (tmp_path / "o2").exists()


def test_reshare_asks_a_wrong_or_too_short_passphrase_again_at_a_terminal(
    tmp_path: Path,
) -> None:
    """In a re-share, a wrong current passphrase or a too short new one stopped the run,
    and every passphrase typed before it (the M current ones) was lost. At a terminal
    the same custodian is asked again; from the environment a wrong one is one line."""
    data, out, _ = init_ca(tmp_path)
    shares = [
        a
        for m in ("customs", "tax", "forex")
        for a in ("--share", str(out / "shares" / f"{m}.share"))
    ]
    new_out = tmp_path / "reshare"
    args = ["ca", "reshare", "--data-dir", str(data), "--out", str(new_out), *shares]
    for m in MEMBERS[1:]:  # customs chooses theirs at the prompt
        pw = tmp_path / f"new-{m}.txt"
        pw.write_text(f"new passphrase of {m}\n")
        args += ["--custodian-passphrase", f"{m}={pw}"]
    env = _terminal_env(**_old_passphrases(("tax", "forex")))
    current = b"(customs): passphrase of your current share file: "
    choose = b"(customs): choose the passphrase of your share file (at least 12 characters): "
    typed = [
        (current, b"not the passphrase"),
        (current, b"share passphrase of customs"),  # after "wrong passphrase ...; type it again"
        (choose, b"short"),
        (b"Repeat for confirmation", b"short"),
        (choose, b"customs new passphrase"),
        (b"Repeat for confirmation", b"customs new passphrase"),
    ]
    text, code = at_terminal(args, env, typed=typed)
    assert code == 0, text
    assert "wrong passphrase, or the file was changed; type it again." in text, text
    assert "Too short: a share file's passphrase has at least 12 characters" in text, text
    assert "re-shared as" in text
    opened = open_share_file(
        (new_out / "shares" / "customs.share").read_bytes(), b"customs new passphrase"
    )
    assert opened.member == "customs"

    # from the environment: no second try, one line
    again = _eport(
        "ca", "reshare", "--data-dir", str(data), "--out", str(tmp_path / "o2"),
        "--share", str(new_out / "shares" / "customs.share"),
        "--share", str(new_out / "shares" / "tax.share"),
        "--share", str(new_out / "shares" / "forex.share"),
        env={**base_env(), **_old_passphrases(), "EPORT_SHARE_PASSPHRASE_CUSTOMS": "wrong one"},
    )  # fmt: skip
    line = _one_error_line(again)
    assert "customs.share: cannot open the share file: wrong passphrase" in line, line
    assert not (tmp_path / "o2").exists()


# -- a CA whose keys are in a PKCS#11 token -----------------------------------------------------


class Tokens:
    """SoftHSM2 tokens in a temporary directory (their own SOFTHSM2_CONF)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "softhsm2.conf"
        self.pin = root / "ca.pin"

    def uri(self, label: str) -> str:
        return f"pkcs11:token={label}?module-path={MODULE}&pin-source=file:{self.pin}"

    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def labels(self, label: str) -> list[str]:
        """The labels of the objects token ``label`` holds, read by a separate process."""
        code = (
            "import pkcs11,sys;t=pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2]);"
            "s=t.open(user_pin=sys.argv[3]);print('|'.join(o.label for o in s.get_objects()))"
        )
        res = subprocess.run(
            [sys.executable, "-c", code, MODULE, label, CA_PIN],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env()},
            check=True,
        )
        return sorted(x for x in res.stdout.strip().split("|") if x)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tokens]:
    util = need("softhsm2-util", "/usr/bin/softhsm2-util")
    need("libsofthsm2.so", MODULE)
    t = Tokens(tmp_path_factory.mktemp("tokens"))
    (t.root / "tokens").mkdir()
    t.conf.write_text(
        f"directories.tokendir = {t.root / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\nslots.removable = false\n"
    )
    t.pin.write_text(CA_PIN + "\n")
    for label in ("eport-cut", "eport-ca", "eport-custodian"):
        subprocess.run(
            [util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", CA_PIN],
            check=True,
            capture_output=True,
            env={**os.environ, **t.env()},
        )
    yield t


def test_a_pkcs11_init_cut_short_destroys_the_keys_it_made_in_the_token(
    tokens: Tokens, tmp_path: Path
) -> None:
    """SIGTERM during `eport ca init --pkcs11-uri` said "removed what it had made (…);
    nothing of it is left", but the token kept the keys it had made, labelled as a live
    CA's ('eport issuers/agency', 'eport ca/log'). They are destroyed, and said."""
    data, out = tmp_path / "data", tmp_path / "ceremony"
    assert tokens.labels("eport-cut") == []
    proc = subprocess.Popen(
        [EPORT, "ca", "init", "--data-dir", str(data), "--out", str(out),
         "--pkcs11-uri", tokens.uri("eport-cut")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**custodian_env(), **tokens.env()}, preexec_fn=default_sigint,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (data / "ca" / "root.crt").exists():  # the keys are made, not the records
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no ca/root.crt"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = _one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    assert "the init was stopped by SIGTERM: removed what it had made" in line, line
    assert "keys in the PKCS#11 token (eport issuers/" in line and "eport ca/log" in line, line
    assert "nothing of it is left" in line, line
    assert not data.exists() and not out.exists()
    assert tokens.labels("eport-cut") == []  # none left behind


def test_a_pkcs11_ca_starts_unsealed_and_needs_no_unseal(tokens: Tokens, tmp_path: Path) -> None:
    """The init of a CA whose keys are in a token said "the server starts sealed until 3
    custodians run eport ca unseal", and `eport ca unseal` then said "The CA is already
    unsealed.": it never was sealed. Both now say what happens. And a custodian's token
    share opened with no PIN anywhere names the option that gives one (the refusal said
    to add pin-source "to the URI", where the user had given none)."""
    data, out = tmp_path / "data", tmp_path / "ceremony"
    port = free_port()
    env = {**custodian_env(), **tokens.env(), "EPORT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    custodian = f"pkcs11:token=eport-custodian?pin-source=file:{tokens.pin}"
    made = _eport(
        "ca", "init", "--data-dir", str(data), "--out", str(out),
        "--pkcs11-uri", tokens.uri("eport-ca"), "--custodian-token", f"tax={custodian}",
        env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "starts sealed" not in made.stdout, made.stdout
    assert "the server starts unsealed (its issuing CA, OCSP and log keys are in the token" in (
        made.stdout
    )
    assert "root operations still need 3 custodians (`eport ca ceremony join`)" in made.stdout

    shares = [
        a
        for m in ("customs", "tax", "forex")
        for a in ("--share", str(out / "shares" / f"{m}.share"))
    ]
    no_pin = _eport(
        "ca", "reshare", "--data-dir", str(data), "--out", str(tmp_path / "r"), *shares,
        env={**base_env(), **tokens.env(), **_old_passphrases()},
    )  # fmt: skip
    line = _one_error_line(no_pin)
    assert "the PIN of Tax key custodian's PKCS#11 token is needed: set EPORT_PKCS11_PIN, or " in (
        line
    )
    assert "give --share-token tax=URI with ?pin-source=file:PATH in the URI" in line, line

    srv, proc = start_server(data, dev=False, env=env, log_dir=tmp_path, port=port)
    try:
        res = srv.eport(
            "ca", "unseal", "--share", str(out / "shares" / "customs.share"), "--fingerprint",
            "00", EPORT_SHARE_PASSPHRASE="share passphrase of customs", **tokens.env(),
        )  # fmt: skip
        assert "already unsealed" not in res.stdout
        assert res.stdout.strip() == (
            "The CA's keys are held in a PKCS#11 token: the CA needs no unseal (it started "
            "unsealed); your share is needed for root ceremonies only (eport ca ceremony join)."
        )
        res = srv.eport(
            "ca", "unseal", "--share", str(out / "shares" / "customs.share"), "--fingerprint",
            "00", "--json", **tokens.env(),
        )  # fmt: skip
        assert json.loads(res.stdout) == {"sealed": False, "keys_in_token": True}
    finally:
        stop(proc)


# -- runbook 8: the enrollment code of an APPROVE-OFFICER ceremony is lost ------------------------


@pytest.mark.slow  # a sealed server unsealed, two ceremonies of three joins each: ~15 s
def test_a_lost_approve_officer_code_is_replaced_by_a_new_application(tmp_path: Path) -> None:
    """What docs/emergency-plan.md, runbook 8, says to do when the code an APPROVE-OFFICER
    ceremony showed is lost: it cannot be given again (another member's officer may not
    give the member's codes, and the application is no longer pending for a second
    ceremony); a new application of the same person and a new ceremony give a new code;
    once that officer is in force the lost code enrolls nobody (the same name is in
    force), and the new officer withdraws the first approval."""
    from tests.test_custody_ceremonies import join, officer_args, start, unsealed_custody_server

    with unsealed_custody_server(tmp_path) as (srv, out, tmp):
        pw = {"EPORT_PASSPHRASE": "officer passphrase"}
        srv.eport("revoke", "--reason", "keyCompromise", *officer_args(out, LEFT), **pw)

        def applied() -> str:
            res = srv.eport(
                "apply", "--class", "agency", "--agency", LEFT, "--name", "Wang Fang", "--json"
            )
            return str(json.loads(res.stdout)["id"])

        def approved_by_quorum(app: str) -> str:
            cid = str(start(srv, out, "APPROVE-OFFICER", f"application={app}")["id"])
            for member in ("customs", "tax"):
                join(srv, out, cid, member)
            return str(json.loads(join(srv, out, cid, "inspection").stdout)["enrollment_code"])

        first = applied()
        lost = approved_by_quorum(first)  # shown once, then lost
        customs = officer_args(out, "customs")
        res = srv.eport("ra", "new-code", first, *customs, check=False, **pw)
        assert res.returncode == 1 and f"only an officer of agency '{LEFT}'" in res.stderr, res
        res = srv.eport(
            "ca", "ceremony", "start", "APPROVE-OFFICER", f"application={first}", *customs,
            check=False, **pw,
        )  # fmt: skip
        assert res.returncode == 1 and f"application {first} is already approved" in res.stderr

        second = applied()  # the same person applies again: a new ceremony approves it
        code = approved_by_quorum(second)
        officer = tmp / "new-officer"
        srv.eport("enroll", "--code", code, "--profile", "agency", "--out", str(officer))
        stale = srv.eport(
            "enroll", "--code", lost, "--profile", "agency", "--out", str(tmp / "stale"),
            check=False,
        )  # fmt: skip
        assert stale.returncode == 1 and "Wang Fang" in stale.stderr, stale
        own = ["--cert", str(officer / "cert.pem"), "--key", str(officer / "key.pem")]
        srv.eport("ra", "withdraw", first, "--reason", "its code was lost", *own)
        shown = json.loads(srv.eport("application", "show", first, "--json").stdout)
        assert shown["state"] == "rejected", shown
