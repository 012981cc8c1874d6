"""``eport ca init``, ``eport ca unseal``, ``eport ca ceremony …`` and ``eport ca rotate``.

The init ceremony runs on the CA host; everything else is a client of the custody API
(``/ca/v1/custody``). A custodian's share leaves the share file only sealed to the
ceremony's X25519 key (:mod:`ca.share_transport`); compare the key fingerprint the
command shows with the one the server printed (or the ceremony's opener read out).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from cryptography.hazmat.primitives import serialization

from ca import custody
from ca.share_transport import key_fingerprint, seal_share
from ca.stopping import how_it_ended, stops_unwind
from cli import options
from cli.client import CAClient, CLIError, NotSent, RemoteError
from cli.keyfiles import identity_options
from cli.options import (
    data_dir_option,
    json_option,
    json_text,
    no_line_reason,
    policies_option,
    print_result,
    secret_prompt,
    stdin_is_terminal,
)

MIN_PASSPHRASE = 12


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    print_result(json_text(data) if as_json else text)


def _read_secret_file(path: Path) -> bytes:
    try:
        return path.read_text().rstrip("\r\n").encode()
    except OSError as exc:
        raise CLIError(f"cannot read passphrase file {path}: {exc.strerror}") from None


def _refuse_quorum_of_one(policies: Any, policies_dir: Path) -> None:
    """Joint custody needs at least two custodians to act together: with a threshold of
    1, any one custodian alone unseals the CA and signs as the root."""
    if policies.members.threshold < 2:
        raise CLIError(
            f"{Path(policies_dir) / 'members.toml'}: threshold: {policies.members.threshold} "
            "is no joint custody (one custodian alone would unseal the CA and sign as the "
            "root); set it to 2 or more"
        )


def _check_served_policies(data_dir: Path, policies_dir: Path | None, policies: Any) -> None:
    """The policy directory loads whole, as ``eport serve`` loads it before it serves
    (:func:`authsvc.policy.load_access_policy` against ``policies``' members: the token
    service's ``services.toml`` and ``access.toml``, ``EPORT_AUTH_POLICIES_DIR`` if set,
    else this directory). A member taken out of ``members.toml`` that a service or an
    access rule still names made a custody set that ``eport serve`` then refused to start
    on; a :class:`~ca.errors.PolicyError` names the file and the key, before any
    passphrase is asked or anything written. A directory with neither file belongs to a
    CA served alone (``eport serve --only ca``, its token service elsewhere): nothing to
    check here."""
    from authsvc.config import AuthConfig
    from authsvc.policy import load_access_policy
    from ca.errors import PolicyError

    overrides: dict[str, Any] = {"data_dir": data_dir}
    if policies_dir is not None:
        overrides["policies_dir"] = policies_dir
    auth_dir = Path(AuthConfig.load(overrides).policies_dir)
    if not any((auth_dir / name).exists() for name in ("services.toml", "access.toml")):
        return
    try:
        load_access_policy(auth_dir, {m.id for m in policies.members.members})
    except PolicyError as exc:
        why = (
            " (a member taken out of members.toml is taken out of services.toml and "
            "access.toml too: docs/emergency-plan.md, runbook 3)"
            if "unknown member agency" in exc.detail
            else ""
        )
        raise CLIError(f"{exc.detail}; eport serve would refuse these policies{why}") from None


def member_env(prefix: str, member: str) -> str:
    """The environment variable ``prefix`` + the member id, upper case, a ``-`` as ``_``
    (``EPORT_SHARE_PASSPHRASE_FOREIGN_EXCHANGE`` for ``foreign-exchange``): a name a POSIX
    shell can export."""
    return prefix + member.upper().replace("-", "_")


def _member_secret(prefix: str, member: str) -> str | None:
    """The value of :func:`member_env`'s variable, or of the name with the ``-`` kept
    (set by ``env``, as earlier releases documented it); None if neither is set."""
    for name in dict.fromkeys((member_env(prefix, member), prefix + member.upper())):
        value = os.environ.get(name)
        if value:
            return value
    return None


def _custodian_passphrase(member: str, custodian: str, files: dict[str, Path]) -> bytes:
    """The passphrase of ``member``'s new share file: from its file, the environment, or
    chosen at the prompt. One too short is asked again at a terminal (a refusal there
    lost every passphrase typed before it: the other custodians', and in a re-share the
    M current ones); from a file, the environment or a pipe it is one line and exit 1."""
    from_env = _member_secret("EPORT_CUSTODIAN_PASSPHRASE_", member)
    if member in files:
        value = _read_secret_file(files[member])
    elif from_env is not None:
        value = from_env.encode()
    else:
        label = (
            f"{custodian} ({member}): choose the passphrase of your share file "
            f"(at least {MIN_PASSPHRASE} characters)"
        )
        while True:
            try:
                value = secret_prompt(label, confirm=True).encode()
            except click.Abort as exc:
                raise CLIError(
                    f"the custodian of {member} must choose a passphrase: "
                    f"--custodian-passphrase {member}=FILE or "
                    f"{member_env('EPORT_CUSTODIAN_PASSPHRASE_', member)}{no_line_reason(exc)}"
                ) from None
            if len(value) >= MIN_PASSPHRASE or not stdin_is_terminal():
                break
            click.echo(
                f"Too short: a share file's passphrase has at least {MIN_PASSPHRASE} "
                "characters; choose another.",
                err=True,
            )
    if len(value) < MIN_PASSPHRASE:
        raise CLIError(
            f"the passphrase of {member}'s share must have at least {MIN_PASSPHRASE} characters"
        )
    return value


def _share_passphrase(file: Path | None) -> bytes:
    if file is not None:
        return _read_secret_file(file)
    if os.environ.get("EPORT_SHARE_PASSPHRASE"):
        return os.environ["EPORT_SHARE_PASSPHRASE"].encode()
    try:
        return secret_prompt("Passphrase of your share file").encode()
    except click.Abort as exc:
        raise CLIError(
            "the share file's passphrase is needed: --passphrase-file or EPORT_SHARE_PASSPHRASE"
            f"{no_line_reason(exc)}"
        ) from None


def _with_pin(uri: Any, who: str, option: str) -> Any:
    """``uri`` (a :class:`ca.pkcs11.Pkcs11Uri`) with a PIN it can use: its own
    pin-source or pin-value, ``EPORT_PKCS11_PIN``, else one typed at a prompt (kept in
    memory only: key files and share files record URIs without a pin-value). ``option``:
    how the user gives the token's URI (``--pkcs11-uri URI``), which the refusal names:
    a share file names its key, so the user may have given no URI at all."""
    from ca import pkcs11

    if "pin-value" in uri.query or "pin-source" in uri.query or os.environ.get(pkcs11.PIN_ENV):
        return uri
    try:
        if not stdin_is_terminal():
            raise click.Abort
        pin = str(click.prompt(f"PIN of {who}'s PKCS#11 token", hide_input=True, err=True))
    except click.Abort:
        raise CLIError(
            f"the PIN of {who}'s PKCS#11 token is needed: set {pkcs11.PIN_ENV}, or give "
            f"{option} with ?pin-source=file:PATH in the URI"
        ) from None
    return type(uri)(dict(uri.path), {**uri.query, "pin-value": pin})


def _token_opener(
    header: dict[str, Any], given: str | None, option: str = "--pkcs11-uri URI"
) -> custody.ShareCipher:
    """The token key that opens a share file whose header names one (``given``, the
    custodian's ``--pkcs11-uri``, says how to reach the token; ``option``: how it is
    given, for a refusal)."""
    from ca import pkcs11

    stored = header.get("token", {})
    if not isinstance(stored, dict) or stored.get("mechanism") != pkcs11.SHARE_KEY_MECHANISM:
        raise custody.ShareRejected("the share file names an unsupported token mechanism")
    key = pkcs11.TokenShareKey.for_file(
        str(stored.get("key", "")), pkcs11.Pkcs11Uri.parse(given) if given else None
    )
    who = str(header.get("custodian", header.get("member", "the custodian")))
    return pkcs11.TokenShareKey(_with_pin(key.uri, who, option))


def _read_share_file(file: Path) -> tuple[bytes, dict[str, Any]]:
    """A share file's bytes and its clear header (member, protection); one line naming
    the file when it cannot be read or is not a share file (a custodian holding several
    files gave the wrong one)."""
    try:
        blob = file.read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read share file {file}: {exc.strerror}") from None
    try:
        return blob, custody.share_file_header(blob)
    except custody.ShareRejected as exc:
        raise CLIError(f"{file}: {exc.detail}") from None


def _open_share(
    file: Path,
    passphrase_file: Path | None,
    token_uri: str | None = None,
    read: tuple[bytes, dict[str, Any]] | None = None,
) -> custody.ShareFile:
    """The share file opened (its passphrase asked, or its token used); ``read``: the
    file as :func:`_read_share_file` read it already."""
    blob, header = read or _read_share_file(file)
    if custody.share_file_protection(header) == "token":
        return custody.open_share_file(blob, _token_opener(header, token_uri))
    if token_uri is not None:
        raise CLIError(f"{file} is opened with a passphrase, not a PKCS#11 token")
    return custody.open_share_file(blob, _share_passphrase(passphrase_file))


def _check_fingerprint(fingerprint: str, expected: str | None) -> None:
    if expected is not None:
        if expected.replace(":", "").lower() != fingerprint.replace(":", ""):
            raise CLIError(
                f"the ceremony key's fingerprint is {fingerprint}, not {expected}: "
                "refusing to send the share (wrong server, or a man in the middle)"
            )
        return
    if not stdin_is_terminal():
        # Nobody to compare it: a share is never sent to a key no one checked.
        raise CLIError(
            "without a terminal to confirm the ceremony key's fingerprint, pass it with "
            "--fingerprint (as the server's console or the ceremony's opener reads it out); "
            "the share was not sent"
        )
    click.echo(f"Ceremony key fingerprint: {fingerprint}", err=True)
    if not click.confirm(
        "Does it match the fingerprint the server (or the ceremony's opener) shows?", err=True
    ):
        raise CLIError("share not sent")


def _sealed_for(doc: dict[str, Any], share: custody.Share, expected: str | None) -> dict[str, Any]:
    if doc.get("state") == "open" and doc.get("this_instance") is False:
        raise CLIError(
            f"ceremony {doc['id']} was opened by another server instance (this one "
            "restarted since, or runs on another host) and cannot complete here: join at the "
            "instance that opened it, or ask for a new one; the share was not sent"
        )
    if doc.get("state") == "open" and doc.get("custody_current") is False:
        then = (
            "the server must be restarted and unsealed with the new share files "
            "(docs/emergency-plan.md, runbook 3)"
            if doc.get("operation") == "UNSEAL"
            else "open a new one (an RA officer's `eport ca ceremony start`)"
        )
        raise CLIError(
            f"ceremony {doc['id']} was opened for custody set {doc['custody_id']}, which has "
            f"been re-shared since, so it cannot complete: {then}; the share was not sent"
        )
    if doc["custody_id"] != share.custody_id:
        raise CLIError(
            f"this share belongs to custody set {share.custody_id}; the ceremony is for "
            f"{doc['custody_id']}: a share file of another custody set (after a re-share "
            "only the new share files count; a server restored from a backup made before a "
            "re-share takes the share files of that time) or of another CA"
        )
    public = base64.b64decode(doc["public_key"])
    fp = key_fingerprint(public)
    if fp != doc.get("key_fingerprint"):
        raise CLIError("the server's ceremony key and fingerprint disagree")
    _check_fingerprint(fp, expected)
    return seal_share(share, doc["id"], public)


def _progress(doc: dict[str, Any]) -> str:
    joined = ", ".join(doc["joined"]) or "none yet"
    return f"{doc['progress']} of {doc['threshold']} custodians ({joined})"


passphrase_file_option = click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the share file's passphrase (else EPORT_SHARE_PASSPHRASE, else a prompt).",
)
share_option = click.option(
    "--share",
    "share_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Your share file (from `eport ca init`).",
)
share_token_option = click.option(
    "--pkcs11-uri",
    "token_uri",
    metavar="URI",
    help="For a share file kept by your PKCS#11 token: how to reach the token "
    "('pkcs11:token=LABEL?module-path=...&pin-source=file:PATH'); the share file names "
    "the key. Else EPORT_PKCS11_MODULE and EPORT_PKCS11_PIN, else a PIN prompt.",
)
custodian_token_option = click.option(
    "--custodian-token",
    "custodian_tokens",
    multiple=True,
    metavar="MEMBER=URI",
    callback=options.member_pairs,
    help="Keep MEMBER's share file encrypted by a new AES key in that custodian's own "
    "PKCS#11 token (RFC 7512 URI) instead of a passphrase.",
)
fingerprint_option = click.option(
    "--fingerprint",
    help="The ceremony key's fingerprint, as read out of band; the share is sent only if "
    "it matches.",
)


def _client() -> CAClient:
    ctx = click.get_current_context().find_root()
    return CAClient(ctx.obj.server)


# -- init -------------------------------------------------------------------------------------


@click.command("init")
@policies_option(
    "Policy directory (default: EPORT_POLICIES_DIR, else the repository's policies/); its "
    "services.toml and access.toml must load with its members, as eport serve loads them."
)
@data_dir_option("Where the CA keeps its database and sealed keys.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Ceremony directory: the public record, the share files, the first RA officers.",
)
@click.option(
    "--custodian-passphrase",
    "custodian_passphrases",
    multiple=True,
    metavar="MEMBER=FILE",
    callback=options.member_pairs,
    help="A custodian's share-file passphrase (at least 12 characters) from FILE (else "
    "EPORT_CUSTODIAN_PASSPHRASE_<MEMBER>, else a prompt for each custodian).",
)
@custodian_token_option
@click.option(
    "--officer-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Encrypts the first officers' keys, all with this one passphrase: each agency sets "
    "its own on receipt (eport key passwd) (else EPORT_OFFICER_PASSPHRASE, else a prompt).",
)
@click.option(
    "--pkcs11-uri",
    metavar="URI",
    help="Make the issuing CA, OCSP responder and log keys in this PKCS#11 token "
    "(RFC 7512: 'pkcs11:token=LABEL?pin-source=file:PATH'); the key files only name them.",
)
@click.option(
    "--pkcs11-root",
    is_flag=True,
    help="With --pkcs11-uri: make the root key in the token too (the token's PIN then "
    "guards it; root operations still need M custodians).",
)
@json_option
@stops_unwind()  # SIGTERM or SIGHUP unwinds an init cut short, as Ctrl-C does
def ca_init(
    policies_dir: Path | None,
    data_dir: Path,
    out: Path,
    custodian_passphrases: tuple[str, ...],
    custodian_tokens: tuple[str, ...],
    officer_passphrase_file: Path | None,
    pkcs11_uri: str | None,
    pkcs11_root: bool,
    as_json: bool,
) -> None:
    """Create the joint CA under M-of-N custody of the member agencies' custodians.

    \b
    The root key is wrapped by a root key-encryption key, the issuing CA, OCSP and log
    keys by a seal key-encryption key; each is split (Shamir, threshold M of the N
    members in policies/members.toml) into one share per custodian, written to
    OUT/shares/<member>.share encrypted to that custodian's passphrase. Neither key is
    stored anywhere else: M custodians unseal the server (eport ca unseal) and approve
    every root operation (eport ca ceremony). Every certificate made here is logged,
    and so is the custody record (share fingerprints, threshold), which the root key
    signs (ca/custody.json.sig: other hosts of a shared database take the record only
    with it).

    With --pkcs11-uri the online keys (and with --pkcs11-root the root key) are made
    in the token instead, never extractable; the server signs with them from the
    start, with the PIN from the URI's pin-source or EPORT_PKCS11_PIN.

    The URLs printed into the issuing CAs' certificates (CRLs, issuer certificates) and
    the leaves' OCSP come from EPORT_PUBLIC_BASE_URL (or EPORT_STATUS_BASE_URL): set it
    to the name relying parties use first, as they keep it for their lifetime.

    \b
      EPORT_PUBLIC_BASE_URL=https://ca.eport.example \\
      eport ca init --data-dir /srv/eport --out ceremony/ \\
          --custodian-passphrase customs=customs.pass ...   (one per member, else prompts)
    """
    from ca import custody_signature
    from ca import hierarchy as h
    from ca.ceremony import initialize
    from ca.config import CAConfig
    from ca.policy import load_policies
    from ca.signer import write_private
    from cli.main import _secret, describe

    overrides: dict[str, Any] = {"data_dir": data_dir}
    if policies_dir is not None:
        overrides["policies_dir"] = policies_dir
    cfg = CAConfig.load(overrides)
    from ca.db import other_ca_records, unrecorded_root

    refusal = other_ca_records(cfg.sqlalchemy_url)
    unfinished = h.unfinished_init_advice(data_dir)
    if unfinished is not None:
        raise CLIError(unfinished + _records_kept(cfg.sqlalchemy_url, data_dir, refusal))
    if h.exists(data_dir):
        raise CLIError(
            unrecorded_root(cfg.sqlalchemy_url, data_dir)
            or f"{data_dir} already holds a CA; a second init would orphan it"
        )
    if refusal is not None:
        raise CLIError(refusal)
    if (out / "officers").exists() or (out / "shares").exists():
        raise CLIError(f"{out} holds an earlier ceremony; choose an empty --out directory")
    policies = load_policies(cfg.policies_dir)
    _refuse_quorum_of_one(policies, cfg.policies_dir)
    _check_served_policies(data_dir, policies_dir, policies)
    members = [(m.id, m.custodian) for m in policies.members.members]
    files: dict[str, Path] = {}
    for item in custodian_passphrases:
        member, sep, file_name = item.partition("=")
        if not sep or policies.members.get(member) is None:
            raise click.BadParameter(
                f"{options.clip(item)}: expected MEMBER=FILE of a member",
                param_hint="--custodian-passphrase",
            )
        files[member] = Path(file_name)
    protectors = _share_protectors(members, files, custodian_tokens)
    officer_pw = _secret(
        officer_passphrase_file,
        "EPORT_OFFICER_PASSPHRASE",
        "officer keys",
        "--officer-passphrase-file",
    )
    token = None
    if pkcs11_root and not pkcs11_uri:
        raise CLIError("--pkcs11-root needs --pkcs11-uri")
    if pkcs11_uri:
        from ca import pkcs11

        token = pkcs11.TokenKeys(pkcs11.Pkcs11Uri.parse(pkcs11_uri), root=pkcs11_root)
        pkcs11.login(token.uri)  # a wrong PIN or token fails here, before any key is made
    made = custody.establish(members, policies.members.threshold)
    token_keys: list[Any] = []
    # Taken before anything is made: on an error or Ctrl-C before the init completes,
    # what this run made goes (and only that); kill -9 leaves ca/init.unfinished, which
    # the next init and `eport serve` name (h.unfinished_init_advice)
    unwind = _init_unwind(data_dir, out, cfg.sqlalchemy_url)
    try:
        try:
            h.begin_init(data_dir, "eport ca init", out, made=unwind.outermost())
            shares_dir = out / "shares"
            share_files: dict[str, dict[str, Any]] = {}
            for member, _ in members:
                cipher = _share_cipher(protectors[member], made.record.custody_id, member)
                if not isinstance(cipher, bytes):
                    token_keys.append(cipher)
                blob = custody.seal_share_file(made.record, made.shares[member], cipher)
                path = shares_dir / f"{member}.share"
                write_private(path, blob)
                share_files[member] = _share_entry(path, made.shares[member], cipher)
            done = initialize(
                cfg,
                policies,
                officer_passphrase=lambda _mid: officer_pw,
                officer_dir=out / "officers",
                actor="ceremony:init",
                custody_set=made,
                token=token,
                out=out,
                finish=False,
                made=unwind.outermost(),
            )
        finally:
            made.wipe()
        out.mkdir(parents=True, exist_ok=True)
        root_pem = done.hierarchy.root.public_bytes(serialization.Encoding.PEM)
        (out / "root.crt").write_bytes(root_pem)
        (out / "custody.json").write_text(
            json.dumps(made.record.to_json(), indent=2, sort_keys=True) + "\n"
        )
        _copy_signature(custody_signature.signature_path(data_dir), out)
        # the log's checkpoint key, which auditors pin out of band (docs/audit.md): it was
        # only on the CA host (DATA_DIR/ca/log.pub)
        log_pub = (h.ca_dir(data_dir) / "log.pub").read_bytes()
        (out / "log.pub").write_bytes(log_pub)
        record: dict[str, Any] = {
            "root": describe(done.hierarchy.root),
            "issuers": {k: describe(v.certificate) for k, v in done.hierarchy.issuers.items()},
            "officers": {k: str(v) for k, v in done.officers.items()},
            "members": [m for m, _ in members],
            "threshold": policies.members.threshold,
            "custody_id": made.record.custody_id,
            "sequence": made.record.sequence,
            "shares": share_files,
            "log_key_sha256": hashlib.sha256(log_pub).hexdigest(),
        }
        ceremony_json = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        (out / "ceremony.json").write_text(ceremony_json)
        h.finish_init(data_dir)  # the last step: from here on the CA is complete
    except BaseException as exc:
        _forget_token_keys(token_keys)  # a failed ceremony leaves no key in a custodian's token
        # nor in the CA's: the keys it made there carry a live CA's labels
        in_token = token.destroy_made() if token is not None else None
        said = _unwind_init(unwind, exc, data_dir, cfg.sqlalchemy_url, in_token)
        if said is not None and isinstance(exc, KeyboardInterrupt):
            raise CLIError(said) from None  # the one line (not click's "Aborted.")
        if said is not None:
            click.echo(f"eport: {said}", err=True)  # the error itself follows
        raise
    m, n = policies.members.threshold, len(members)
    lines = [
        f"Joint CA created in {data_dir}/ca/ under {m}-of-{n} custody "
        f"({made.record.custody_id}, sequence {made.record.sequence}).",
        f"Root:    {record['root']['subject']}  SHA-256 {record['root']['sha256']}",
    ]
    lines += [f"Issuer:  {iid:<11} {d['subject']}" for iid, d in record["issuers"].items()]
    if token is not None:
        held = (
            "root, issuing CA, OCSP and log keys"
            if pkcs11_root
            else "issuing CA, OCSP and log keys"
        )
        lines.append(f"Token:   {held} in {token.uri.without_pin()}")
    lines += [_share_line(mid, d) for mid, d in share_files.items()]
    lines += [f"Officer: {mid:<11} {path}/" for mid, path in record["officers"].items()]
    if token is None:
        start = f"the server starts sealed until {m} custodians run `eport ca unseal`"
    else:
        # nothing to unseal: `eport serve` opens the token with its PIN and signs at once
        start = (
            "the server starts unsealed (its issuing CA, OCSP and log keys are in the token, "
            "which `eport serve` opens with its PIN: there is nothing to `eport ca unseal`); "
            f"root operations still need {m} custodians (`eport ca ceremony join`)"
        )
    lines.append(
        f"Public record: {out}/ceremony.json, {out}/custody.json (signed by the root: "
        f"{out}/custody.json.sig), {out}/log.pub (the log key auditors pin). Hand each "
        f"share file and officer directory to its agency; {start}."
    )
    lines.append(
        f"Officer keys: all {len(record['officers'])} are encrypted with this init's one "
        "officer passphrase, which whoever ran it knows: each agency sets its own on receipt, "
        f"before first use (eport key passwd {out}/officers/<member>/officer.key)."
    )
    _emit(as_json, record, "\n".join(lines))
    testing = sorted(
        {
            p.name
            for p in policies.profiles.values()
            for o in p.policy_oids
            if o.dotted_string.startswith(TEST_POLICY_ARC)
        }
    )
    base = cfg.certificate_base_url
    if (urlsplit(base).hostname or "") in LOOPBACK_NAMES:
        # printed into the issuing CAs' certificates (CRL distribution point, caIssuers)
        # for their ten years: said, as the test OIDs are (a rehearsal on one host is fine)
        click.secho(
            f"WARNING: the issuing CA certificates name {base} for their CRLs and issuer "
            "certificates, which no other host reaches: a production joint CA sets "
            "EPORT_PUBLIC_BASE_URL (or EPORT_STATUS_BASE_URL) to the name relying parties "
            "use before its init",
            fg="yellow",
            err=True,
        )
    if testing:
        # printed into every certificate of those profiles for their life (the first
        # policy OID is the role): said, not refused (a rehearsal uses them on purpose)
        click.secho(
            f"WARNING: profiles {', '.join(testing)} carry RFC 7229 test policy OIDs "
            f"({TEST_POLICY_ARC}*), the repository's development set: a production joint CA "
            "registers its own arc and names it in policies/ before its init "
            "(policies/README.md)",
            fg="yellow",
            err=True,
        )


LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})
"""Host names of a base URL that only this host reaches."""

TEST_POLICY_ARC = "1.3.6.1.5.5.7.13."
"""id-TEST (RFC 7229 §2): certificate policy OIDs for testing only."""

_INIT_OUT_FILES = ("shares", "officers", "root.crt", "custody.json", "custody.json.sig", "log.pub")
"""What ``eport ca init`` writes in its --out directory (``ceremony.json`` last)."""


def _init_unwind(data_dir: Path, out: Path, url: str) -> Any:
    """What ``eport ca init`` is about to make that is not there yet: the data
    directory (or its ca/), its own SQLite database, the --out directory (or its files)."""
    from ca.ceremony import Unwind
    from ca.hierarchy import ca_dir
    from ca.privatefiles import SIDE_FILES, sqlite_file

    database = sqlite_file(url)
    databases = [] if database is None else [database]
    databases += [database.with_name(database.name + s) for s in SIDE_FILES] if database else []
    return Unwind.of(
        data_dir,
        ca_dir(data_dir),
        *databases,
        out,
        *(out / name for name in _INIT_OUT_FILES),
        out / "ceremony.json",
    )


def _unwind_init(
    unwind: Any,
    exc: BaseException,
    data_dir: Path,
    url: str,
    in_token: tuple[list[Any], list[Any]] | None = None,
) -> str | None:
    """After ``eport ca init`` failed or was interrupted before it completed: remove what
    it made; what to say about it, in one line (and what is left to do, if anything).
    ``in_token``: the keys it made in the CA's PKCS#11 token that were destroyed, and
    those that could not be (:meth:`ca.pkcs11.TokenKeys.destroy_made`), which are named."""
    from ca import hierarchy as h
    from ca import pkcs11
    from ca.db import other_ca_records

    destroyed, left = in_token or ([], [])
    token_left = (
        f"the PKCS#11 token keeps {len(left)} keys it made, which could not be deleted "
        f"({', '.join(pkcs11.key_name(u) for u in left)}): delete them (their private and "
        "public objects) before another init, as they carry a CA's labels"
        if left
        else ""
    )
    removed = unwind.remove()
    what = how_it_ended(exc)
    advice = h.unfinished_init_advice(data_dir)  # a ca/ there before it is not removed
    if advice is not None:
        return f"the init {what}: {'; '.join(x for x in (advice, token_left) if x)}"
    kept = _records_kept(url, data_dir, other_ca_records(url))
    if not removed and not kept and not destroyed and not left:
        return None  # it failed before it made anything
    made = [str(p) for p in removed]
    if destroyed:
        made.append(
            f"its {len(destroyed)} keys in the PKCS#11 token "
            f"({', '.join(str(u.object) for u in destroyed)})"
        )
    gone = f"removed what it had made ({', '.join(made)})" if made else ""
    rest = kept.lstrip("; ") if kept else ""
    if not rest and not left:
        rest = "nothing of it is left: run `eport ca init` again"
    return f"the init {what}: {'; '.join(x for x in (gone, token_left, rest) if x)}"


def _records_kept(url: str, data_dir: Path, refusal: str | None) -> str:
    """``"; …"``: what to do about the records an unfinished init committed to a database
    that removing its data directory does not remove (``refusal``: that it holds
    records, :func:`ca.db.other_ca_records`); ``""`` if there is none."""
    from sqlalchemy.engine import make_url

    from ca.privatefiles import sqlite_file

    if refusal is None:
        return ""
    database = sqlite_file(url)
    if database is not None and database.absolute().is_relative_to(Path(data_dir).absolute()):
        return ""
    where = make_url(url).render_as_string(hide_password=True)
    return f"; the database {where} keeps its records: the next init needs an empty database"


def _copy_signature(signature: Path, out: Path) -> None:
    """The root's signature of the custody record beside the ceremony's public copy of
    it (``OUT/custody.json.sig``): anyone with the root certificate can check the two."""
    (out / "custody.json.sig").write_bytes(signature.read_bytes())


def _share_protectors(
    members: list[tuple[str, str]], files: dict[str, Path], tokens: tuple[str, ...]
) -> dict[str, bytes | Any]:
    """Per member of the new custody set: the passphrase of its share file, or the
    custodian's token (a logged-in :class:`ca.pkcs11.Pkcs11Uri`) that will encrypt it."""
    from ca import pkcs11

    names = dict(members)
    token_uris: dict[str, Any] = {}
    for item in tokens:
        member, sep, uri = item.partition("=")
        if not sep or member not in names:
            raise click.BadParameter(
                f"{options.clip(item)}: expected MEMBER=URI of a member",
                param_hint="--custodian-token",
            )
        if member in files:
            raise CLIError(f"{member}: give a passphrase file or a token, not both")
        token_uris[member] = _with_pin(
            pkcs11.Pkcs11Uri.parse(uri), names[member], f"--custodian-token {member}=URI"
        )
    out: dict[str, bytes | Any] = {}
    for member, name in members:
        if member in token_uris:
            pkcs11.login(token_uris[member])  # wrong PIN or token: fail before any key is made
            out[member] = token_uris[member]
        else:
            out[member] = _custodian_passphrase(member, name, files)
    return out


def _share_cipher(protector: bytes | Any, custody_id: str, member: str) -> bytes | Any:
    """The passphrase, or a new AES key in the custodian's token, for one share file."""
    from ca import pkcs11

    if isinstance(protector, bytes):
        return protector
    return pkcs11.TokenShareKey.generate(protector, f"eport share {custody_id} {member}")


def _share_entry(path: Path, shares: Any, cipher: bytes | Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "file": str(path),
        "fingerprints": {p.value: s.fingerprint for p, s in shares.items()},
    }
    if not isinstance(cipher, bytes):
        entry["token_key"] = cipher.stored_uri()
    return entry


def _share_line(member: str, entry: dict[str, Any]) -> str:
    kept = f"  (key in {entry['token_key']})" if "token_key" in entry else ""
    return f"Share:   {member:<11} {entry['file']}{kept}"


def _forget_token_keys(keys: list[Any]) -> None:
    for key in keys:
        try:
            key.destroy()
        except Exception:  # the ceremony's own error is the one to show
            click.echo(f"could not delete {key.stored_uri()} from its token", err=True)


# -- reshare ----------------------------------------------------------------------------------


def _member_files(items: tuple[str, ...], option: str, known: set[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for item in items:
        member, sep, file_name = item.partition("=")
        if not sep or member not in known:
            raise click.BadParameter(
                f"{options.clip(item)}: expected MEMBER=FILE of a member", param_hint=option
            )
        files[member] = Path(file_name)
    return files


def _current_passphrase_given(member: str, files: dict[str, Path]) -> bool:
    """Whether the passphrase of ``member``'s current share file comes from a file or the
    environment (else it is typed, and a wrong one may be typed again)."""
    return member in files or _member_secret("EPORT_SHARE_PASSPHRASE_", member) is not None


WRONG_PASSPHRASE_TRIES = 3
"""How many times a custodian may type the passphrase of their current share file at
``eport ca reshare``'s prompt before the re-share stops."""


def _current_share_passphrase(member: str, custodian: str, files: dict[str, Path]) -> bytes:
    if member in files:
        return _read_secret_file(files[member])
    from_env = _member_secret("EPORT_SHARE_PASSPHRASE_", member)
    if from_env is not None:
        return from_env.encode()
    try:
        return secret_prompt(
            f"{custodian} ({member}): passphrase of your current share file"
        ).encode()
    except click.Abort as exc:
        raise CLIError(
            f"the passphrase of {member}'s share file is needed: --share-passphrase "
            f"{member}=FILE or {member_env('EPORT_SHARE_PASSPHRASE_', member)}"
            f"{no_line_reason(exc)}"
        ) from None


def _open_current_share(
    path: Path,
    blob: bytes,
    header: dict[str, Any],
    custodian: str,
    files: dict[str, Path],
    token_uri: str | None,
) -> custody.ShareFile:
    """A current share file opened for ``eport ca reshare``: by its custodian's token, or
    by its passphrase, which a custodian typing it at a terminal may type again when it
    is wrong (:data:`WRONG_PASSPHRASE_TRIES` in all): stopping there lost the passphrases
    the others had typed."""
    member = str(header.get("member", ""))
    if custody.share_file_protection(header) == "token":
        option = f"--share-token {member}=URI"
        try:
            return custody.open_share_file(blob, _token_opener(header, token_uri, option))
        except custody.ShareRejected as exc:
            raise CLIError(f"{path}: {exc.detail}") from None
    again = not _current_passphrase_given(member, files) and stdin_is_terminal()
    tries = 1
    while True:
        try:
            return custody.open_share_file(
                blob, _current_share_passphrase(member, custodian, files)
            )
        except custody.WrongPassphrase as exc:
            if not again or tries >= WRONG_PASSPHRASE_TRIES:
                raise CLIError(f"{path}: {exc.detail}") from None
            tries += 1
            click.echo(f"{path}: {exc.detail}; type it again.", err=True)
        except custody.ShareRejected as exc:
            raise CLIError(f"{path}: {exc.detail}") from None


@click.command("reshare")
@policies_option(
    "Policy directory: the members and threshold of the new custody set (default: "
    "EPORT_POLICIES_DIR, else the repository's policies/); its services.toml and "
    "access.toml must load with those members, as eport serve loads them."
)
@data_dir_option("The CA's data directory (its ca/custody.json is replaced).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="New directory for the new share files and the public record of the re-share.",
)
@click.option(
    "--share",
    "share_files",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A current share file of a custodian taking part (M of them, one each).",
)
@click.option(
    "--share-passphrase",
    "share_passphrases",
    multiple=True,
    metavar="MEMBER=FILE",
    callback=options.member_pairs,
    help="The passphrase of MEMBER's current share file from FILE (else "
    "EPORT_SHARE_PASSPHRASE_<MEMBER>, else a prompt).",
)
@click.option(
    "--share-token",
    "share_tokens",
    multiple=True,
    metavar="MEMBER=URI",
    callback=options.member_pairs,
    help="How to reach the PKCS#11 token that keeps MEMBER's current share file (module, "
    "pin-source); the share file names the key. Else EPORT_PKCS11_MODULE/EPORT_PKCS11_PIN.",
)
@click.option(
    "--custodian-passphrase",
    "custodian_passphrases",
    multiple=True,
    metavar="MEMBER=FILE",
    callback=options.member_pairs,
    help="The passphrase of MEMBER's new share file (at least 12 characters) from FILE "
    "(else EPORT_CUSTODIAN_PASSPHRASE_<MEMBER>, else a prompt for each custodian).",
)
@custodian_token_option
@json_option
def ca_reshare(
    policies_dir: Path | None,
    data_dir: Path,
    out: Path,
    share_files: tuple[Path, ...],
    share_passphrases: tuple[str, ...],
    share_tokens: tuple[str, ...],
    custodian_passphrases: tuple[str, ...],
    custodian_tokens: tuple[str, ...],
    as_json: bool,
) -> None:
    """Re-share both KEKs to a new custody set: a share was lost, or a custodian left
    or joined.

    \b
    Run on the CA host with M custodians of the current set present, each with their
    share file (--share, passphrase typed at the prompt). Their shares rebuild the root
    and seal KEKs, which are split anew (threshold M of the members policies/members.toml
    names now) into OUT/shares/<member>.share, each encrypted to a passphrase its
    custodian chooses. The new custody record, signed by the root key the shares open
    (ca/custody.json.sig), replaces ca/custody.json (the old one is kept as
    ca/custody-<old id>.json) and the re-share is logged (custody.reshared).
    Every old share file is refused from then on; the wrapped CA keys do not change.

    A member who leaves is taken out of services.toml and access.toml too: the policy
    directory is loaded as eport serve loads it, and refused before any passphrase.

    \b
      eport ca reshare --data-dir /srv/eport --out reshare/ \\
          --share customs.share --share tax.share --share forex.share
    """
    import time

    from sqlalchemy.orm import sessionmaker

    from ca import custody_files, custody_signature, translog
    from ca import hierarchy as h
    from ca.config import CAConfig
    from ca.crosshost import custody_behind
    from ca.crosshost_sql import SqlHierarchyRecord
    from ca.custody_store import latest_reshare
    from ca.db import make_engine
    from ca.policy import load_policies
    from ca.reshare import check_presented, rebuild, reshare, settle
    from ca.signer import write_private
    from ca.store import SqlStore

    started = time.perf_counter()
    overrides: dict[str, Any] = {"data_dir": data_dir}
    if policies_dir is not None:
        overrides["policies_dir"] = policies_dir
    cfg = CAConfig.load(overrides)
    if not h.exists(data_dir) or not custody_files.under_custody(data_dir):
        raise CLIError(f"{data_dir} holds no CA under joint custody (eport ca init)")
    h.check_complete(data_dir)  # an init cut short is no CA to re-share
    if (out / "shares").exists():
        raise CLIError(f"{out} holds an earlier ceremony; choose an empty --out directory")
    policies = load_policies(cfg.policies_dir)
    _refuse_quorum_of_one(policies, cfg.policies_dir)
    _check_served_policies(data_dir, policies_dir, policies)
    members = [(m.id, m.custodian) for m in policies.members.members]
    engine = make_engine(cfg.sqlalchemy_url)
    try:
        store = SqlStore(
            sessionmaker(engine, expire_on_commit=False), event_sinks=(translog.append_event,)
        )
        settle(data_dir, latest_reshare(store))
        behind = custody_behind(data_dir, SqlHierarchyRecord(engine).files())
        if behind is not None:
            raise CLIError(behind)
        record = custody_files.load_record(data_dir)
        current = {c.member: c.custodian for c in record.custodians}
        old_files = _member_files(share_passphrases, "--share-passphrase", set(current))
        old_tokens: dict[str, str] = {}
        for item in share_tokens:
            member, sep, uri = item.partition("=")
            if not sep or member not in current:
                raise click.BadParameter(
                    f"{options.clip(item)}: expected MEMBER=URI of a member",
                    param_hint="--share-token",
                )
            old_tokens[member] = uri
        # Every file read, and the set checked, before anyone types a passphrase: the
        # member and custody set of a share file are in its clear header (rebuild checks
        # them again once the files are opened)
        presented = [(path, *_read_share_file(path)) for path in share_files]
        check_presented(
            record,
            [(str(hd.get("member", "")), str(hd.get("custody_id", ""))) for _, _, hd in presented],
        )
        opened: list[custody.ShareFile] = []
        for path, blob, header in presented:
            member = str(header.get("member", ""))
            opened.append(
                _open_current_share(
                    path,
                    blob,
                    header,
                    current.get(member, member),
                    old_files,
                    old_tokens.get(member),
                )
            )
        rebuilt = rebuild(data_dir, record, opened)
        try:
            new_files = _member_files(
                custodian_passphrases, "--custodian-passphrase", {m for m, _ in members}
            )
            protectors = _share_protectors(members, new_files, custodian_tokens)
            written: dict[str, dict[str, Any]] = {}
            token_keys: list[Any] = []

            def write_shares(
                new: custody.CustodyRecord,
                shares: Any,
            ) -> None:
                for member, _ in members:
                    cipher = _share_cipher(protectors[member], new.custody_id, member)
                    if not isinstance(cipher, bytes):
                        token_keys.append(cipher)
                    blob = custody.seal_share_file(new, shares[member], cipher)
                    path = out / "shares" / f"{member}.share"
                    write_private(path, blob)
                    written[member] = _share_entry(path, shares[member], cipher)
                custody_files.write_durably(out / "custody.json", custody_files.record_bytes(new))

            try:
                new = reshare(
                    data_dir,
                    store,
                    rebuilt,
                    members,
                    policies.members.threshold,
                    write_shares,
                    now=datetime.datetime.now(datetime.UTC),
                )
            except BaseException:
                if not written or len(written) < len(members):
                    _forget_token_keys(token_keys)
                raise
        finally:
            rebuilt.wipe()
    finally:
        engine.dispose()
    doc: dict[str, Any] = {
        "custody_id": new.custody_id,
        "sequence": new.sequence,
        "previous_custody_id": record.custody_id,
        "keys_custody_id": new.keys_id,
        "threshold": new.threshold,
        "members": list(new.members),
        "participants": list(rebuilt.participants),
        "shares": written,
        "archived_record": str(custody_files.archived_path(data_dir, record.custody_id)),
        "seconds": round(time.perf_counter() - started, 3),
    }
    _copy_signature(custody_signature.archived_signature_path(data_dir, new.custody_id), out)
    (out / "reshare.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    m, n = new.threshold, len(new.custodians)
    lines = [
        f"Custody set {record.custody_id} re-shared as {new.custody_id} ({m}-of-{n}, "
        f"sequence {new.sequence}) by "
        f"{', '.join(rebuilt.participants)}; the wrapped CA keys are unchanged.",
    ]
    lines += [_share_line(mid, d) for mid, d in written.items()]
    lines.append(
        f"Public record: {out}/custody.json (signed by the root: {out}/custody.json.sig), "
        f"{out}/reshare.json; the replaced record is kept "
        f"as {doc['archived_record']}. Hand each new share file to its custodian; every "
        "old share file is now refused (destroy them)."
    )
    _emit(as_json, doc, "\n".join(lines))


# -- unseal -----------------------------------------------------------------------------------


@click.command("unseal")
@share_option
@passphrase_file_option
@share_token_option
@fingerprint_option
@json_option
def ca_unseal(
    share_file: Path,
    passphrase_file: Path | None,
    token_uri: str | None,
    fingerprint: str | None,
    as_json: bool,
) -> None:
    """Present your seal share to unseal the server (M custodians, Vault-style).

    The share is sealed to the server instance's unseal key: `eport serve` prints its
    fingerprint at start; pass it with --fingerprint (or compare when asked at the
    terminal; without one, --fingerprint is required). A share
    file kept by your PKCS#11 token is opened there (PIN, not passphrase).

    \b
      eport ca unseal --share ceremony/shares/customs.share --fingerprint FINGERPRINT
    """
    read = _read_share_file(share_file)  # a file that is no share file: said at once
    client = _client()
    state = client.call("GET", "/ca/v1/custody")
    if not state["sealed"]:  # said before the custodian opens their share for nothing
        in_token = _keys_in_token_at(client, state)
        text = (
            "The CA's keys are held in a PKCS#11 token: the CA needs no unseal (it started "
            "unsealed); your share is needed for root ceremonies only (eport ca ceremony join)."
            if in_token
            else "The CA is already unsealed."
        )
        _emit(as_json, {"sealed": False, "keys_in_token": in_token}, text)
        return
    opened = _open_share(share_file, passphrase_file, token_uri, read)
    sealed = _sealed_for(state["unseal"], opened.share(custody.Purpose.SEAL), fingerprint)
    doc = client.call("POST", "/ca/v1/custody/unseal", {"share": sealed})
    c = doc["ceremony"]
    if doc["sealed"]:
        text = f"Share of {opened.member} accepted: {_progress(c)}; the CA is still sealed."
    else:
        text = f"Share of {opened.member} accepted: {_progress(c)}. The CA is unsealed."
    for notice in doc.get("warnings", []):  # unsealed without some keys
        click.secho(f"WARNING: {notice}", fg="yellow", err=True)
    _emit(as_json, doc, text)


def _keys_in_token_at(client: CAClient, state: dict[str, Any]) -> bool:
    """Whether the server that answered ``state`` (``GET /ca/v1/custody``, not sealed)
    holds its keys in a PKCS#11 token. Such a server is never sealed, so its instance
    never opened an unseal ceremony (one is opened, with an id its boot id gives, the
    first time a sealed instance is asked; it stays, done, once unsealed): no such
    ceremony, keys in a token."""
    from ca.bootkey import UNSEAL_PREFIX

    boot = state.get("boot_id")
    if not isinstance(boot, str) or not boot:
        return False
    try:
        client.call("GET", f"/ca/v1/custody/ceremonies/{UNSEAL_PREFIX}{boot}")
    except RemoteError as exc:
        return exc.status == 404
    return False


# -- quorum ceremonies ------------------------------------------------------------------------


@click.group("ceremony")
def ceremony_group() -> None:
    """Quorum ceremonies: root operations that run once M custodians have joined."""


def _start(
    operation: str,
    params: dict[str, str],
    cert: Path | None,
    key: Path | None,
    pw: Path | None,
    no_officer: bool,
) -> Any:
    from cli import keyfiles

    if no_officer and (cert is not None or key is not None):
        raise click.UsageError(
            "--no-officer opens the ceremony unsigned: give no --cert/--key "
            "(nor EPORT_CERT/EPORT_KEY)"
        )
    if not no_officer and (cert is None or key is None):
        raise click.UsageError(
            "the RA officer who opens the ceremony signs it: give --cert and --key (or, while "
            "no member agency has an RA officer in force, --no-officer)"
        )
    ident = None
    if cert is not None and key is not None:
        ident = keyfiles.load_identity(cert, key, pw)
    return _client().call(
        "POST",
        "/ca/v1/custody/ceremonies",
        {"operation": operation, "params": params},
        identity=ident,
    )


no_officer_option = click.option(
    "--no-officer",
    is_flag=True,
    help="Open it unsigned. Accepted only while no member agency has an RA officer "
    "certificate in force (all revoked or expired), and only for APPROVE-OFFICER, ROOT-CRL "
    "and ROTATE-ISSUER of the officers' issuing CA: the custodians' quorum authorizes it "
    "(docs/emergency-plan.md, runbook 8).",
)


def _started_text(doc: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"Ceremony {doc['id']}: {doc['operation']} {json.dumps(doc['params'])}",
            f"Key fingerprint: {doc['key_fingerprint']}  (read it out to the custodians)",
            f"Needs {doc['threshold']} custodians: eport ca ceremony join {doc['id']} --share FILE",
            f"Expires: {doc['expires_at']}",
        ]
    )


_officer_options = identity_options("RA officer", required=False)
"""--cert/--key/--passphrase-file of the RA officer who opens a ceremony (none with
--no-officer)."""
_renewing_officer_options = identity_options("RA officer")


@ceremony_group.command("start")
@click.argument("operation")
@click.argument("params", nargs=-1, metavar="[KEY=VALUE]...")
@_officer_options
@no_officer_option
@json_option
def ceremony_start(
    operation: str,
    params: tuple[str, ...],
    cert_file: Path | None,
    key_file: Path | None,
    passphrase_file: Path | None,
    no_officer: bool,
    as_json: bool,
) -> None:
    """Open a ceremony: ROOT-CRL, ISSUE-INTERMEDIATE issuer=ID, ROTATE-ISSUER issuer=ID,
    REVOKE-INTERMEDIATE issuer=GENERATION [reason=keyCompromise], ROTATE-LOG-KEY,
    REPLACE-LOG-KEY, APPROVE-OFFICER application=APP_ID (an RA officer's request). M
    custodians then run `eport ca ceremony join ID`.

    ROTATE-LOG-KEY hands the transparency log over to a new key with the old key's
    signature; REPLACE-LOG-KEY does so when the old key is lost or compromised, with the
    root key's signature instead (auditors follow it with `eport audit verify --root`).

    APPROVE-OFFICER gives a member agency left with no RA officer in force (all revoked
    or expired: only its own officers approve its staff) a new one; the custodian whose
    join completes it is shown the enrollment code, once. When no member agency has one
    left, nobody can sign an opening: --no-officer opens APPROVE-OFFICER (and ROOT-CRL,
    and ROTATE-ISSUER of the officers' issuing CA) unsigned.

    \b
      eport ca ceremony start ROOT-CRL --cert officer.pem --key officer.key
      eport ca ceremony start REVOKE-INTERMEDIATE issuer=enterprise-2 reason=keyCompromise ...
      eport ca ceremony start APPROVE-OFFICER application=app_... --cert officer.pem ...
      eport ca ceremony start APPROVE-OFFICER application=app_... --no-officer
    """
    values: dict[str, str] = {}
    for p in params:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise click.BadParameter(
                f"{options.clip(p)}: expected KEY=VALUE", param_hint="KEY=VALUE"
            )
        if k in values:  # the last one won without a word: issuer=enterprise issuer=agency
            raise click.BadParameter(
                f"{options.clip(k)} is given twice ({options.clip(values[k])}, {options.clip(v)})",
                param_hint="KEY=VALUE",
            )
        values[k] = v
    doc = _start(operation, values, cert_file, key_file, passphrase_file, no_officer)
    _emit(as_json, doc, _started_text(doc))


@ceremony_group.command("join")
@click.argument("ceremony_id", callback=options.ceremony_id)
@share_option
@passphrase_file_option
@share_token_option
@fingerprint_option
@json_option
def ceremony_join(
    ceremony_id: str,
    share_file: Path,
    passphrase_file: Path | None,
    token_uri: str | None,
    fingerprint: str | None,
    as_json: bool,
) -> None:
    """Join a ceremony with your root share; the M-th custodian's join runs it.

    \b
      eport ca ceremony join CEREMONY_ID --share ceremony/shares/customs.share \\
          --fingerprint FINGERPRINT
    """
    read = _read_share_file(share_file)  # a file that is no share file: said at once
    client = _client()
    doc = client.call("GET", f"/ca/v1/custody/ceremonies/{ceremony_id}")
    if doc["state"] != "open":  # said before the custodian opens their share for nothing
        raise CLIError(f"ceremony {ceremony_id} is {doc['state']}")
    approving = doc.get("approving")
    if approving:  # whom the custodian's share approves, before it is opened
        click.echo(
            f"Ceremony {ceremony_id} approves RA officer {approving['person_name']} of member "
            f"agency {approving['agency_id']} (application {approving['application']}).",
            err=True,
        )
    opened = _open_share(share_file, passphrase_file, token_uri, read)
    sealed = _sealed_for(doc, opened.share(custody.Purpose.ROOT), fingerprint)
    try:
        doc = client.call(
            "POST", f"/ca/v1/custody/ceremonies/{ceremony_id}/join", {"share": sealed}
        )
    except NotSent:
        raise
    except CLIError as exc:
        if "before it answered" not in str(exc):
            raise
        # the join may have been taken (the M-th: the ceremony done) or not
        raise CLIError(
            f"{exc}: the join may or may not have been taken; see where the ceremony stands "
            f"(eport ca ceremony status {ceremony_id}) before joining again"
        ) from None
    if doc["state"] == "done":
        text = f"{doc['operation']} done with {_progress(doc)}: {json.dumps(doc['result'])}"
        if doc.get("enrollment_code"):
            text += (
                f"\nEnrollment code of the new RA officer (shown once, here only; hand it to "
                f"{doc['result'].get('person_name')} of {doc['result'].get('agency_id')} in "
                f"person): {doc['enrollment_code']}\n"
                f"They enroll with: eport enroll --code CODE --profile agency --out DIR"
            )
    else:
        text = f"Share of {opened.member} accepted: {_progress(doc)}."
    _emit(as_json, doc, text)


@ceremony_group.command("status")
@click.argument("ceremony_id", callback=options.ceremony_id)
@json_option
def ceremony_status(ceremony_id: str, as_json: bool) -> None:
    """Show a ceremony: operation, state, custodians who joined, result.

    \b
      eport ca ceremony status CEREMONY_ID
    """
    doc = _client().call("GET", f"/ca/v1/custody/ceremonies/{ceremony_id}")
    text = (
        f"Ceremony {doc['id']}: {doc['operation']} {json.dumps(doc['params'])} — "
        f"{doc['state']}, {_progress(doc)}; key fingerprint {doc['key_fingerprint']}"
    )
    if doc["state"] == "open" and doc.get("this_instance") is False:
        text = (
            f"Ceremony {doc['id']}: {doc['operation']} {json.dumps(doc['params'])} — "
            f"opened by another server instance (this one restarted since, or runs on "
            f"another host), so it cannot complete here ({_progress(doc)} joined): join at "
            "the instance that opened it, or open a new one"
        )
    elif doc["state"] == "open" and doc.get("custody_current") is False:
        text = (
            f"Ceremony {doc['id']}: {doc['operation']} {json.dumps(doc['params'])} — "
            f"opened for custody set {doc['custody_id']}, which has been re-shared since, "
            f"so it cannot complete ({_progress(doc)} joined): open a new one"
        )
    if doc["result"]:
        text += f"\nResult: {json.dumps(doc['result'])}"
    _emit(as_json, doc, text)


@click.command("rotate")
@click.argument("issuer")
@_officer_options
@no_officer_option
@json_option
def ca_rotate(
    issuer: str,
    cert_file: Path | None,
    key_file: Path | None,
    passphrase_file: Path | None,
    no_officer: bool,
    as_json: bool,
) -> None:
    """Open a quorum ceremony that rolls ISSUER over to a new issuing CA.

    \b
      eport ca rotate enterprise --cert officer.pem --key officer.key
        (ISSUER: enterprise, agency or service; M custodians then join the ceremony)
      eport ca rotate agency --no-officer
        (only while no RA officer is in force: the officers' issuing CA has ended)
    """
    doc = _start(
        "ROTATE-ISSUER", {"issuer": issuer}, cert_file, key_file, passphrase_file, no_officer
    )
    _emit(as_json, doc, _started_text(doc))


@click.command("renew-responders")
@click.option(
    "--force", is_flag=True, help="Renew every responder, not only those about to expire."
)
@_renewing_officer_options
@json_option
def ca_renew_responders(
    force: bool, cert_file: Path, key_file: Path, passphrase_file: Path | None, as_json: bool
) -> None:
    """Renew the OCSP responder certificates that expire soon (an RA officer's request;
    the server must be unsealed). The server also does this by itself.

    The responders are the host's own: with several hosts on one PostgreSQL database,
    --force sent to one host is recorded in the database, and every other host renews
    its own responders at its next check (within a refresher cycle, 30 s by default;
    a sealed host once unsealed): sending it to one host is enough.

    \b
      eport ca renew-responders --cert officer.pem --key officer.key
      eport ca renew-responders --force --cert officer.pem --key officer.key
    """
    from cli import keyfiles

    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    doc = _client().call("POST", "/ca/v1/responders/renew", {"force": force}, identity=ident)
    lines = [
        f"Renewed the OCSP responder of {r['issuer']}: serial {r['serial']}, "
        f"until {r['not_after']} (was {r['previous_serial']}, until {r['previous_not_after']})"
        for r in doc["renewed"]
    ]
    lines += [f"Left {issuer}: {why}" for issuer, why in sorted(doc["skipped"].items())]
    _emit(as_json, doc, "\n".join(lines) or "No OCSP responder to renew.")


def _keys_in_token(data_dir: Path) -> bool:
    """Whether every online CA key is a PKCS#11 token key; if so, each is opened and
    checked now, so a wrong PIN fails in one line before the fork.

    A key missing from a token that holds the others (deleted, or lost with a token that
    was re-initialized) does not stop the start: the server starts degraded, with one
    warning per missing key (what no longer works, and what replaces it: the emergency
    plan, §7), so that the ceremony that replaces the lost key (an issuing CA's rollover,
    REPLACE-LOG-KEY for the log's) can run. The workers inherit what the checks found
    (:attr:`ca.pkcs11.Pkcs11Signer.missing`): ``/ca/v1/health`` names the keys."""
    from ca import hierarchy, pkcs11

    d = hierarchy.ca_dir(data_dir)
    files = [d / "log.key", *(d / "issuers").glob("*.key"), *(d / "responders").glob("*.key")]
    if not all(pkcs11.is_reference(f) for f in files):
        return False
    h = hierarchy.load(data_dir, None)
    signers = [h.log_signer, *(c.signer for c in (*h.issuers.values(), *h.responders.values()))]
    first: pkcs11.KeyMissing | None = None
    for signer in signers:
        assert isinstance(signer, pkcs11.Pkcs11Signer)
        try:
            signer.check()
        except pkcs11.KeyMissing as exc:
            first = first or exc
    if first is None:
        return True
    if all(getattr(s, "missing", False) for s in signers):
        raise CLIError(
            f"none of the CA's keys is in its PKCS#11 token ({first.detail}): is it the "
            "right token (or SOFTHSM2_CONF)? A token that lost them all is restored from its "
            f"backup ({hierarchy.EMERGENCY_PLAN})"
        )
    for notice in h.missing_keys().values():
        click.secho(f"WARNING: {notice}", fg="yellow", err=True)
    return True


def announce_sealed_start(data_dir: Path) -> None:
    """Before gunicorn forks: make this instance's boot key and print its unseal key
    (unless the CA keys are in a PKCS#11 token: nothing to unseal)."""
    from ca import bootkey, custody_files
    from ca.share_transport import raw_public

    custody_files.load_record(data_dir)  # fail early on a damaged record
    boot = bootkey.current()  # root ceremonies need it in every worker, token or not
    if _keys_in_token(data_dir):
        click.echo("The CA keys are held in a PKCS#11 token: the CA starts unsealed.")
        return
    public = raw_public(boot.ceremony_key(boot.unseal_ceremony_id).public_key())
    click.secho(
        "The CA starts SEALED: issuance is refused until M custodians run "
        "`eport ca unseal --share FILE --fingerprint FINGERPRINT` with the fingerprint "
        "below.",
        fg="yellow",
        err=True,
    )
    click.echo(f"Unseal key fingerprint: {key_fingerprint(public)}")
