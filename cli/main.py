"""The ``eport`` command: a thin client of the CA API, plus local ceremonies.

Every command that prints a result accepts ``--json`` (one JSON object on stdout).
Errors are one line on stderr and a non-zero exit; ``--verbose`` adds tracebacks.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import errno
import functools
import os
import re
import secrets
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlencode

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ca import pkcs8
from ca.errors import EPortError
from ca.names import accept_names_up_to_64_characters, dn_string
from ca.signer import write_private
from ca.uscc import USCC
from cli import keyfiles
from cli.client import (
    DEFAULT_SERVER,
    CAClient,
    CLIError,
    ForeignAnswer,
    Identity,
    NotSent,
    RemoteError,
    check_server,
    fetch,
)
from cli.keyfiles import identity_options
from cli.options import (
    QUOTED,
    application_id,
    clip,
    data_dir_option,
    hex_serial,
    json_option,
    json_text,
    no_line_reason,
    not_blank,
    print_any_text,
    print_result,
    secret_prompt,
)

F = TypeVar("F", bound=Callable[..., Any])
KEY_TYPES = ["p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096"]


class Ctx:
    def __init__(
        self, server: str, verbose: bool, bad_server: click.BadParameter | None = None
    ) -> None:
        self._server = server
        self.verbose = verbose
        self._bad_server = bad_server

    @property
    def server(self) -> str:
        """The server's base URL; a malformed ``--server``/EPORT_SERVER is a usage error
        (exit 2) here, where a command first needs it: checked before any command ran,
        it stopped ``eport serve``, local commands and every ``--help`` (CLI probe,
        session 27)."""
        if self._bad_server is not None:
            raise self._bad_server
        return self._server

    def client(self) -> CAClient:
        return CAClient(self.server)


def emit(as_json: bool, data: dict[str, Any], text: str, lost: str = "") -> None:
    """Print ``data`` as one JSON object (``--json``) or ``text`` for people; a result that
    cannot be written is an error (:func:`cli.options.print_result`), with ``lost``."""
    print_result(json_text(data) if as_json else text, lost)


pass_ctx = click.make_pass_decorator(Ctx)


def _no_offset(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.BadParameter(
            "pages follow a cursor now: give --after with the cursor the last page named "
            "(an offset skipped rows decided or added between pages)",
            ctx,
            param,
        )


def after_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--after CURSOR``: where a page of a listing starts (the API's ``after``, the
    ``next`` of the page before); and the ``--offset`` of earlier releases, hidden, which
    says to use it instead."""

    def options(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "--offset", hidden=True, expose_value=False, callback=_no_offset, is_eager=True
        )(f)
        return click.option(
            "--after",
            metavar="CURSOR",
            default="",
            help=f"List the {what} after those of the page that named CURSOR (its 'More "
            f"{what} follow' line, or 'next' with --json); the first page without it. "
            f"Nothing is skipped or repeated when {what} change between pages.",
        )(f)

    return options


OLDER_SERVER = "this server is of an older release, which pages by offset and ignores --after"


def check_page(doc: dict[str, Any], after: str) -> None:
    """Refuse a page asked with ``--after`` from a server that does not page by cursor (a
    release before cursors answers no ``next``): it ignored the cursor and answered the
    first page again, which would pass for the page asked."""
    if after and "next" not in doc:
        raise CLIError(
            f"{OLDER_SERVER}: it answered the first page again, not the page after "
            "that cursor; upgrade the server to list the next pages"
        )


def more_hint(as_json: bool, doc: dict[str, Any], what: str) -> None:
    """Say on standard error how to list the next page, when the server says one follows
    (a full page alone does not tell whether it was the last); from a server of an older
    release, which names no cursor, that more follow all the same."""
    nxt = doc.get("next")
    if as_json:
        return
    if isinstance(nxt, str):
        click.echo(f"More {what} follow: run the command again with --after {nxt}", err=True)
    elif "next" not in doc and doc.get("next_offset") is not None:
        click.echo(
            f"More {what} follow, but {OLDER_SERVER}: upgrade the server to list them",
            err=True,
        )


def _server_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--server`` (or EPORT_SERVER) is an http(s) URL with a host, else a usage error
    (exit 2) when a command uses it (:attr:`Ctx.server`), in the name the value came
    from. An EPORT_SERVER set but empty is refused too (click takes it for unset: the
    command went to the default server without a word)."""
    source = ctx.get_parameter_source("server")
    name = "EPORT_SERVER" if source is click.core.ParameterSource.ENVIRONMENT else "--server"
    if source is click.core.ParameterSource.DEFAULT and os.environ.get("EPORT_SERVER") == "":
        value, name = "", "EPORT_SERVER"
    why = check_server(value)
    if why is None:
        return value
    unset = " (or unset EPORT_SERVER for it)" if name == "EPORT_SERVER" and not value else ""
    # kept for the command that uses it (Ctx.server), not raised before any command runs
    ctx.meta["eport.bad_server"] = click.BadParameter(
        f"{value!r} {why}; give the e-port server's base URL, e.g. {DEFAULT_SERVER}{unset}",
        ctx,
        param,
        param_hint=name,
    )
    return value


class LazyGroup(click.Group):
    """A group some of whose commands live in modules imported only when one of them is
    run or listed (``--help``): ``eport apply`` does not pay for the audit, backup and
    custody modules (measured: importing cli.main 0.184 -> 0.169 s of CPU)."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        """Command name → ``module:attribute`` of its click command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = self.lazy.pop(cmd_name, None)
        if where is not None:
            import importlib

            module, _, attribute = where.partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy={
        "audit": "cli.audit:audit",
        "backup": "cli.backup:backup_command",
        "restore": "cli.backup:restore_command",
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--server",
    envvar="EPORT_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    callback=lambda ctx, param, value: _server_url(ctx, param, value),
    help="Base URL of the e-port server, http:// or https:// (env EPORT_SERVER; set, it "
    "must not be empty: unset it for the default).",
)
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="eport-trust")
@click.pass_context
def cli(ctx: click.Context, server: str, verbose: bool) -> None:
    """E-Port Trust: the joint CA and single sign-on of the electronic port.

    \b
    A typical enrollment:
      eport apply --uscc 91350100M000100Y43 --name "Xiamen Harbour Trading Co., Ltd."
      eport ra list --cert officer.pem --key officer.key          (an RA officer)
      eport ra approve APP_ID --cert officer.pem --key officer.key
        (a lost or expired code: eport ra new-code APP_ID --cert officer.pem --key officer.key)
      eport enroll --code CODE --profile enterprise --out ./xiamen-harbour
      eport cert show ./xiamen-harbour/cert.pem

    Start a development server first with `eport serve --dev` (or `make run`).
    """
    try:
        pkcs8.iterations()  # a bad setting stops any command before it makes a key
    except pkcs8.KdfSettingError as exc:
        raise CLIError(str(exc)) from None
    ctx.obj = Ctx(server, verbose, ctx.meta.get("eport.bad_server"))


# -- serve ------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--dev",
    is_flag=True,
    help="Embedded development default: create a development joint CA on first start.",
)
@data_dir_option("Database and key files.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port to listen on (the CA under /ca/v1/, the token service under /auth/).",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Gunicorn worker processes.",
)
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Threads per worker.",
)
@click.option(
    "--only",
    type=click.Choice(["ca", "auth"]),
    default=None,
    help="Serve one service alone: the CA (ca) or the token service (auth). Default: both.",
)
def serve(
    dev: bool, data_dir: Path, host: str, port: int, workers: int, threads: int, only: str | None
) -> None:
    """Run the CA API and the token service (under gunicorn) on HOST:PORT, data in DATA_DIR.

    With --dev, the first start creates a development joint CA in DATA_DIR: a root,
    one issuing CA per subject class, and one RA officer credential per member
    agency in policies/members.toml, under DATA_DIR/dev/. Later starts reuse them.
    Every start first brings the CA's and the token service's database schemas up to
    date (a database of a newer release is refused) and lints every profile's certificate
    template (pkilint; one with an error is refused). On a database shared by several
    hosts it takes the public CA files another host's ceremony changed (the root CRL,
    issuers/active.json and custody.json each with the root's signature, old log keys)
    and refuses, naming the manual step, a host whose CA files need keys only another
    host has, or do not follow a database restored from a backup (copy the ceremony or
    restored host's ca/ directory first).

    Without --dev, a CA made by `eport ca init` starts SEALED and prints its unseal
    key fingerprint: M custodians run `eport ca unseal` (a CA whose keys are not under
    custody is unsealed with EPORT_CA_KEY_PASSPHRASE). The token service's keys are
    encrypted with EPORT_AUTH_KEY_PASSPHRASE (required; 12 characters or more).

    Production may run the two apart, on two hosts behind a front proxy that sends
    /auth/, /.well-known/ and /portal to the token service and the rest to the CA
    (examples/front_proxy/nginx.conf): `--only ca` on the CA host, `--only auth` on the
    other. The token service alone trusts the CA's public files in its own DATA_DIR/ca/
    (root.crt, root.crl, issuers/*.crt), fetched and checked by `eport auth fetch-ca`
    (again after each ceremony), and asks certificate status by OCSP
    (EPORT_AUTH_STATUS_MODE=ocsp), or reads the CA's PostgreSQL database
    (EPORT_AUTH_CA_DATABASE_URL).

    \b
    Settings (environment, or an EPORT_CONFIG file; docs/ca.md "Checked settings"):
      EPORT_PUBLIC_BASE_URL    the name clients use (as given to eport ca init)
      EPORT_STATUS_BASE_URL    OCSP/CRL base printed into certificates (optional)
      EPORT_DATABASE_URL, EPORT_AUTH_DATABASE_URL   PostgreSQL (default: SQLite here)
      EPORT_DATA_DIR, EPORT_DEV  as --data-dir, --dev (EPORT_AUTH_DATA_DIR: the same or unset)
      EPORT_POLICIES_DIR       the policies (default: the repository's policies/)
      EPORT_AUTH_TRUSTED_PROXIES, EPORT_AUTH_PROXY_SECRET   the TLS proxy in front
    Secrets (passphrases, database URLs, the proxy secret) also from a file:
    EPORT_CA_KEY_PASSPHRASE_FILE=/run/secrets/ca. Every setting: docs/settings.md.

    \b
    Examples:
      eport serve --dev --port 8000
      EPORT_AUTH_KEY_PASSPHRASE=... eport serve --data-dir /srv/eport --host 127.0.0.1
      eport serve --only ca --data-dir /srv/eport
      export EPORT_AUTH_STATUS_MODE=ocsp EPORT_AUTH_KEY_PASSPHRASE=...
      eport serve --only auth --data-dir /srv/eport-auth
    """
    import gc

    # The start builds long-lived objects by the hundred thousand (the apps' modules,
    # pkilint's ASN.1 specifications, SQLAlchemy's metadata) and next to no garbage: the
    # cyclic collector, walking them again and again as they are made, cost about a sixth
    # of the imports. Off until just before gunicorn starts (below).
    gc.disable()
    from authsvc.app import upgrade as auth_upgrade
    from authsvc.config import AuthConfig
    from ca import hierarchy
    from ca.config import CAConfig
    from ca.datalock import LOCK_NAME
    from ca.db import upgrade
    from ca.devinit import PASSPHRASE_FILE, dev_dir, ensure_dev_ca
    from cli.serve import run

    _check_listen(host, port)
    base = f"http://{host}:{port}"
    # --data-dir and --dev override the settings only when given: the EPORT_CONFIG file's
    # [ca] data_dir, EPORT_DEV and EPORT_AUTH_DATA_DIR were ignored, the option's default
    # (var) always passed (settings probe, session 22)
    given = click.get_current_context().get_parameter_source("data_dir")
    overrides: dict[str, Any] = {}
    if given is not click.core.ParameterSource.DEFAULT:
        overrides["data_dir"] = data_dir
    if dev:
        overrides["dev"] = True
    if "EPORT_PUBLIC_BASE_URL" not in os.environ:
        overrides["public_base_url"] = base
    if only == "auth":
        _serve_token_service_alone(overrides, host, port, workers, threads, base)
        return
    # The settings first: a bad EPORT_CONFIG or EPORT_* value is said before the data
    # directory is made for the lock below
    cfg = CAConfig.load(overrides)
    data_dir, dev = Path(cfg.data_dir), cfg.dev
    own = os.environ.get("EPORT_AUTH_DATA_DIR")
    if own and only is None and Path(own).resolve() != data_dir.resolve():
        # it was ignored without a word: the token service reads the CA's certificates
        # from the CA's data directory, so the two services of one `eport serve` share it
        raise CLIError(
            f"EPORT_AUTH_DATA_DIR ({own}) is not the CA's data directory ({data_dir}): the "
            "token service of `eport serve` reads the CA's certificates there, so both use "
            "it; unset it (EPORT_AUTH_DATABASE_URL gives the token service its own database)"
        )
    shared = {k: v for k, v in overrides.items() if k in ("dev", "public_base_url")}
    auth_cfg = AuthConfig.load({**shared, "data_dir": data_dir}) if only is None else None
    # The policies too: a set refused leaves no data directory (nor lock) behind
    _check_policies(cfg, auth_cfg)
    existed = data_dir.exists()
    in_use = _hold_for_serving(data_dir)
    unfinished = hierarchy.unfinished_init_advice(data_dir) if not dev else None
    if unfinished is not None:  # an init cut short before it wrote ca/root.crt
        os.close(in_use)
        raise CLIError(f"the CA in {data_dir} cannot be used: {unfinished}")
    if not dev and not hierarchy.exists(data_dir):
        # Said first (after a restore's refusals, above): asking for
        # EPORT_AUTH_KEY_PASSPHRASE, then EPORT_CA_KEY_PASSPHRASE, for a CA that is not
        # there (--dev forgotten, or the wrong --data-dir) sent a new user setting
        # passphrases, and left an auth.db behind; a directory made for the lock goes too
        os.close(in_use)
        if not existed:
            (data_dir / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                data_dir.rmdir()
        raise CLIError(
            f"no CA in {data_dir} (no ca/root.crt): make one with `eport ca init --data-dir "
            f"{data_dir} --out CEREMONY_DIR`, or start a development CA with --dev"
        )
    auth_url = auth_cfg.sqlalchemy_url if auth_cfg is not None else None
    _tighten_databases(cfg.sqlalchemy_url, *([auth_url] if auth_url else []))
    if hierarchy.exists(data_dir):
        hierarchy.check_complete(data_dir)  # before any schema is upgraded
        from ca.db import made_elsewhere

        refused = made_elsewhere(cfg.sqlalchemy_url, data_dir)
        if refused is not None:
            raise CLIError(refused)
        # Before either schema is upgraded (the start is refused, nothing is changed):
        # another CA's database, and a database of a newer release, were refused only
        # after both had been brought up to this release's schema
        _refuse_before_upgrade(cfg, auth_cfg, data_dir)
    from authsvc.app import key_passphrase

    # What can refuse the start and needs no schema of this release, before either is
    # upgraded: a wrong passphrase, or a template pkilint refuses, refused the start only
    # once both schemas were upgraded, and the release before could not run again (upgrade
    # probe, session 27).
    sealed_start = False
    keys_checked = False
    if not dev:
        from ca import custody_files
        from ca import hierarchy as h
        from ca.app import ca_passphrase

        if custody_files.under_custody(data_dir):
            custody_files.load_record(data_dir)  # a damaged record: before any upgrade
            sealed_start = True
        elif ca_passphrase(cfg) is None:
            raise CLIError("set EPORT_CA_KEY_PASSPHRASE to unseal the CA keys (or use --dev)")
        else:
            loaded = h.load(data_dir, ca_passphrase(cfg))  # refuses a wrong passphrase
            for notice in loaded.missing_keys().values():
                click.secho(f"WARNING: {notice}", fg="yellow", err=True)
    if hierarchy.exists(data_dir):
        _prelint_templates(cfg)
        from ca.devinit import PASSPHRASE_FILE, dev_dir

        # its keys' table is as the first release made it; a development CA whose dev/
        # is missing (a restored one) is told so where its files are checked, below
        if auth_cfg is not None and (not dev or (dev_dir(data_dir) / PASSPHRASE_FILE).is_file()):
            keys_checked = _check_auth_keys(auth_cfg, key_passphrase(auth_cfg), early=True)
    _say_upgrades(cfg.sqlalchemy_url, auth_url)
    # The token service's schema first: its database may be the one that cannot be
    # used, and the passphrase check below reads its keys.
    if auth_url is not None:
        auth_upgrade(auth_url)
    if dev:
        click.secho(
            "WARNING: development mode. The CA keys are unsealed with passphrases stored in "
            "the clear under the data directory. Never use --dev for real certificates.",
            fg="yellow",
            err=True,
        )
        made = ensure_dev_ca(cfg)
        d = dev_dir(data_dir)
        click.echo(
            ("Created" if made else "Using") + f" the development joint CA in {data_dir}/ca/"
        )
        click.echo(f"Development credentials: {d}/")
        click.echo(f"  RA officers:  {d}/officers/<agency>/officer.pem, officer.key, chain.pem")
        click.echo(f"  auditors:     {d}/auditors/<agency>/auditor.pem, auditor.key, chain.pem")
        click.echo(
            f"  passphrases:  {d}/{PASSPHRASE_FILE}"
            f" and {d}/officers/<agency>/DEV-ONLY-passphrase.txt"
        )
    else:
        upgrade(cfg.sqlalchemy_url)

    # Fail here, in one line, rather than in every gunicorn worker; and before a sealed
    # start announces its unseal fingerprint, for a server that would not start. A
    # development start too: an EPORT_AUTH_KEY_PASSPHRASE that is not the development one.
    if auth_cfg is not None and not keys_checked:
        _check_auth_keys(auth_cfg, key_passphrase(auth_cfg))
    from ca.db import foreign_root

    refusal = foreign_root(cfg.sqlalchemy_url, data_dir)
    if refusal is not None:
        raise CLIError(refusal)
    _check_hierarchy_record(cfg.sqlalchemy_url, data_dir)
    if sealed_start:
        # Last of the checks: a host refused (another CA's database, CA files behind the
        # database's record) must not print a fingerprint custodians would unseal for.
        from cli.custody import announce_sealed_start

        announce_sealed_start(data_dir)
    _prelint_templates(cfg)
    from cli.serve import start_warnings

    for line in start_warnings(cfg, auth_cfg, host):  # before "Serving", where it is read
        click.secho(f"WARNING: {line}", fg="yellow", err=True)
    click.echo(f"Serving the joint CA on {base} (API under {base}/ca/v1/)")
    if auth_cfg is not None:
        click.echo(f"Serving the token service on {base}/auth/ (issuer {auth_cfg.issuer})")
    else:
        click.echo("Not serving the token service (--only ca)")
    sys.stdout.flush()
    # What the start made is kept for the server's life: collected once here, then frozen
    # (moved out of the collector's sight) before gunicorn forks, so that no worker's
    # collection walks it again (each worker freezes what it builds: cli.serve).
    gc.collect()
    gc.freeze()
    gc.enable()
    try:
        run(cfg, auth_cfg, host, port, workers, threads)
    finally:
        os.close(in_use)


ALONE_FILES = ("root.crt", "root.crl", "issuers/*.crt")
"""The CA's public files a token service run alone trusts, copied from the CA host's
``DATA_DIR/ca/`` (then ``generation``, once a ceremony has made one: a change of it makes
running workers reload them)."""


def _serve_token_service_alone(
    overrides: dict[str, Any], host: str, port: int, workers: int, threads: int, base: str
) -> None:
    """``eport serve --only auth``: the token service without the CA, on a host of its own
    (or beside the CA, as a second process). It needs no CA key and opens no CA database
    unless told to (EPORT_AUTH_CA_DATABASE_URL, or the embedded ``eport.db`` of a CA
    sharing its data directory): what it trusts is the CA's public files in its
    ``DATA_DIR/ca/``, and status comes by OCSP (EPORT_AUTH_STATUS_MODE=ocsp)."""
    import gc

    from authsvc.app import MIGRATIONS as AUTH_MIGRATIONS
    from authsvc.app import VERSION_TABLE as AUTH_VERSIONS
    from authsvc.app import upgrade as auth_upgrade
    from authsvc.config import AuthConfig
    from ca import hierarchy
    from ca.config import CAConfig
    from ca.db import check_known_revision
    from cli.serve import check_policies, run, start_warnings

    auth_cfg = AuthConfig.load(overrides)
    # The server's own settings (the database answer deadline); nothing of the CA is built
    server_cfg = CAConfig.load({k: v for k, v in overrides.items() if k != "data_dir"})
    data_dir = Path(auth_cfg.data_dir)
    check_policies(server_cfg, auth_cfg, serve_ca=False)
    ca_dir = hierarchy.ca_dir(data_dir)
    missing = [name for name in ALONE_FILES if not any(ca_dir.glob(name))]
    if missing:
        raise CLIError(
            f"the token service alone trusts the CA's public files in {ca_dir}/, which has no "
            f"{', '.join(missing)}: fetch them with `eport --server CA_URL auth fetch-ca "
            f"--data-dir {data_dir} --root-sha256 HEX` (or copy {', '.join(ALONE_FILES)} "
            "from the CA host's DATA_DIR/ca/), and again after each ceremony"
        )
    _check_public_files(data_dir)
    embedded_ca = data_dir / "eport.db"
    if auth_cfg.status_mode == "local" and not (auth_cfg.ca_database_url or embedded_ca.is_file()):
        raise CLIError(
            "the token service alone asks certificate status by OCSP: set "
            "EPORT_AUTH_STATUS_MODE=ocsp (the local mode reads the CA's database: "
            f"EPORT_AUTH_CA_DATABASE_URL, or {embedded_ca} of a CA sharing this directory)"
        )
    passphrase = _alone_key_passphrase(auth_cfg)  # before a database is made
    in_use = _hold_for_serving(data_dir)
    try:
        url = auth_cfg.sqlalchemy_url
        _tighten_databases(url)
        try:
            check_known_revision(url, AUTH_MIGRATIONS, AUTH_VERSIONS, "token service")
        except EPortError as exc:
            raise CLIError(exc.detail) from None
        _say_upgrades(None, url)
        auth_upgrade(url)
        if auth_cfg.dev:
            click.secho(
                "WARNING: development mode. The token service's keys are encrypted with a "
                "passphrase stored in the clear under the data directory.",
                fg="yellow",
                err=True,
            )
        _check_auth_keys(auth_cfg, passphrase)
        for line in start_warnings(server_cfg, auth_cfg, host, serve_ca=False):
            click.secho(f"WARNING: {line}", fg="yellow", err=True)
        status = (
            "status by OCSP" if auth_cfg.status_mode == "ocsp" else "status from the CA's database"
        )
        click.echo(
            f"Serving the token service alone on {base}/auth/ (issuer {auth_cfg.issuer}; "
            f"trusting the CA files in {ca_dir}/, {status})"
        )
        sys.stdout.flush()
        gc.collect()
        gc.freeze()
        gc.enable()
        run(server_cfg, auth_cfg, host, port, workers, threads, serve_ca=False)
    finally:
        os.close(in_use)


def _check_public_files(data_dir: Path) -> None:
    """The copied CA files read, and the root CRL is the root's: else one line here rather
    than a traceback from each worker."""
    from authsvc.trust import read_public
    from ca import hierarchy
    from ca.trust import anchors_for

    try:
        public = read_public(data_dir)
        anchors_for(public.root, public.issuers, public.root_crl)
    except (ValueError, OSError) as exc:
        raise CLIError(
            f"the CA's public files in {hierarchy.ca_dir(data_dir)}/ cannot be used ({exc}): "
            "copy them again from the CA host"
        ) from None


def _hold_for_serving(data_dir: Path) -> int:
    """The data directory's lock, shared by every server of the directory for the server's
    life (workers inherit it); an `eport restore` takes it alone and refuses while a
    server holds it. Its file descriptor, or one line and no server."""
    from ca.datalock import hold_for_serving
    from ca.errors import Conflict

    try:
        return hold_for_serving(data_dir)
    except Conflict as exc:
        raise CLIError(exc.detail) from None
    except OSError as exc:
        raise CLIError(f"cannot use the data directory {data_dir}: {exc.strerror}") from None


def _alone_key_passphrase(cfg: Any) -> bytes:
    """The token service's key passphrase; with --dev, from a development data directory
    (one a CA's --dev start made), which a token service's own directory is not."""
    from authsvc.app import key_passphrase
    from ca.devinit import PASSPHRASE_FILE, dev_dir

    if (
        cfg.dev
        and not cfg.key_passphrase
        and not (dev_dir(cfg.data_dir) / PASSPHRASE_FILE).is_file()
    ):
        raise CLIError(
            f"--dev takes the token service's passphrase from {dev_dir(cfg.data_dir)}/"
            f"{PASSPHRASE_FILE}, made by a CA's `eport serve --dev` there, and there is none: "
            "set EPORT_AUTH_KEY_PASSPHRASE (12 characters or more)"
        )
    try:
        value: bytes = key_passphrase(cfg)
    except EPortError as exc:
        raise CLIError(exc.detail) from None
    return value


def _say_upgrades(ca_url: str | None, auth_url: str | None) -> None:
    """One line for each existing schema this start upgrades, before it does: an upgrade
    of a large database takes a while, during which nothing is served (it looked hung)."""
    from authsvc.app import SCHEMA_HEAD as AUTH_HEAD
    from authsvc.app import VERSION_TABLE as AUTH_VERSIONS
    from ca.db import SCHEMA_HEAD, VERSION_TABLE, recorded_revisions
    from ca.privatefiles import sqlite_file

    for url, table, head, what in (
        (auth_url, AUTH_VERSIONS, AUTH_HEAD, "token service"),
        (ca_url, VERSION_TABLE, SCHEMA_HEAD, "CA"),
    ):
        if url is None:  # a service not served here
            continue
        path = sqlite_file(url)
        if path is not None and not path.is_file():
            continue
        try:
            found = recorded_revisions(url, table)
        except Exception:  # said by the upgrade itself, in one line
            return
        if found and found != {head}:
            was = ", ".join(sorted(found))
            click.echo(f"Upgrading the {what} database schema from {was} to {head} …")
            sys.stdout.flush()


def _refuse_before_upgrade(cfg: Any, auth_cfg: Any, data_dir: Path) -> None:
    from authsvc.app import MIGRATIONS as AUTH_MIGRATIONS
    from authsvc.app import VERSION_TABLE as AUTH_VERSIONS
    from ca.db import MIGRATIONS, VERSION_TABLE, check_known_revision, foreign_root

    refusal = foreign_root(cfg.sqlalchemy_url, data_dir)
    if refusal is not None:
        raise CLIError(refusal)
    try:
        check_known_revision(cfg.sqlalchemy_url, MIGRATIONS, VERSION_TABLE, "CA")
        if auth_cfg is not None:
            check_known_revision(
                auth_cfg.sqlalchemy_url, AUTH_MIGRATIONS, AUTH_VERSIONS, "token service"
            )
    except EPortError as exc:
        raise CLIError(exc.detail) from None


def _prelint_templates(cfg: Any) -> None:
    """Every profile's template linted here, once, rather than in each worker as it
    starts (they inherit the result); a template pkilint refuses is one line and no
    server, rather than a traceback from every worker."""
    from ca.app import prelint_templates
    from ca.errors import LintFailed

    try:
        prelint_templates(cfg)
    except LintFailed as exc:
        raise CLIError(exc.detail) from None


def _check_hierarchy_record(url: str, data_dir: Path) -> None:
    """Several hosts of one database (ca.crosshost): take the public CA files another
    host's ceremony changed, and refuse, in one line naming the manual step, a host whose
    files need keys only that host has (it would issue from a superseded issuing CA or
    sign checkpoints with a retired log key)."""
    from ca.crosshost_sql import check_at_start

    outcome = check_at_start(url, data_dir)
    if outcome.picked_up:
        click.echo(
            f"Took {', '.join(outcome.picked_up)} from the database's record of the CA files "
            f"(generation {outcome.generation}): another host's ceremony changed them"
        )
    warning = outcome.warning()
    if warning is not None:
        raise CLIError(warning)
    if outcome.responders_due:
        click.echo(
            "Another host forced an OCSP responder renewal: this host renews its own "
            "responders as it starts (once unsealed)"
        )


def _check_listen(host: str, port: int) -> None:
    """HOST:PORT can be listened on, else one line before anything is made or announced
    (gunicorn would print "Serving" and then retry the bind in a page of log lines)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CLIError(
                    f"port {port} on {host} is in use (another eport serve?): choose --port"
                ) from None
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _tighten_databases(*urls: str) -> None:
    """SQLite databases made by an earlier release under umask 0022 (0644) become 0600,
    as new ones are made (:mod:`ca.privatefiles`), with one line on stderr."""
    from ca.privatefiles import tighten_sqlite

    changed: list[str] = []
    for url in dict.fromkeys(urls):
        try:
            changed += [str(p) for p in tighten_sqlite(url)]
        except OSError as exc:  # not ours to change: say so, and serve as before
            click.echo(f"eport: could not make the database private: {exc}", err=True)
    if changed:
        click.echo(
            f"eport: {', '.join(changed)} could be read by other users; now mode 0600 "
            "(the databases hold enterprise data and session and token hashes)",
            err=True,
        )


def _check_policies(cfg: Any, auth_cfg: Any) -> None:
    """Both services' policy files load (a PolicyError names the file and the key): one
    line and no server, rather than a traceback from every gunicorn worker."""
    from authsvc.policy import load_access_policy
    from ca.policy import load_policies

    members = load_policies(cfg.policies_dir).members.members
    if auth_cfg is not None:
        load_access_policy(auth_cfg.policies_dir, {m.id for m in members})


def _check_auth_keys(cfg: Any, passphrase: bytes, *, early: bool = False) -> bool:
    """The token service's stored signing key opens with ``passphrase`` (or none is
    stored yet); else one line and no server. ``early``: before its schema is upgraded,
    when its database may not be made yet; False (not checked) if it holds no signing
    keys' table yet (every revision has had it as the first made it)."""
    import sqlalchemy
    from sqlalchemy.orm import sessionmaker

    from authsvc.keys import check_passphrase
    from authsvc.store import SqlAuthStore
    from ca.db import make_engine

    engine = make_engine(cfg.sqlalchemy_url)
    try:
        if early:
            try:
                if not sqlalchemy.inspect(engine).has_table("auth_signing_keys"):
                    return False
            except sqlalchemy.exc.SQLAlchemyError:
                return False  # said in full by the upgrade, which meets it first
        check_passphrase(SqlAuthStore(sessionmaker(engine, expire_on_commit=False)), passphrase)
    except EPortError as exc:
        raise CLIError(exc.detail) from None
    finally:
        engine.dispose()
    return True


# -- CA ceremonies ----------------------------------------------------------------------------


@cli.group(
    "ca",
    cls=LazyGroup,
    lazy={
        name: f"cli.custody:{attribute}"
        for name, attribute in (
            ("init", "ca_init"),
            ("reshare", "ca_reshare"),
            ("unseal", "ca_unseal"),
            ("ceremony", "ceremony_group"),
            ("rotate", "ca_rotate"),
            ("renew-responders", "ca_renew_responders"),
        )
    },
)
def ca_group() -> None:
    """Ceremonies of the joint CA: init on the CA host; unseal and quorum ceremonies."""


def _secret(file: Path | None, env: str, what: str, option: str) -> bytes:
    """A new passphrase of at least 12 characters for ``what``: from ``file`` (given with
    ``option``), else the environment variable ``env``, else typed twice at a terminal."""
    if file is not None:
        return keyfiles.passphrase(file, new=True, what=what)
    if os.environ.get(env):
        value = os.environ[env]
        if len(value) < 12:
            raise CLIError(f"{env} must have at least 12 characters")
        return value.encode("utf-8", "surrogateescape")
    try:
        value = secret_prompt(f"Passphrase for the {what}", confirm=True)
    except click.Abort as exc:
        raise CLIError(
            f"the passphrase of the {what} is needed: {option} FILE or {env}{no_line_reason(exc)}"
        ) from None
    if len(value) < 12:
        raise CLIError(f"the passphrase of the {what} must have at least 12 characters")
    return str(value).encode("utf-8", "surrogateescape")


# -- apply / enroll ---------------------------------------------------------------------------


@cli.command()
@click.option(
    "--uscc", help="The enterprise's Unified Social Credit Code (18 characters, GB 32100-2015)."
)
@click.option(
    "--name",
    required=True,
    callback=not_blank,
    help="Legal name (enterprise), officer name (agency), auditor name (auditor), at most "
    "64 characters, or DNS name (service).",
)
@click.option(
    "--class",
    "subject_class",
    type=click.Choice(["enterprise", "agency", "auditor", "service"]),
    default="enterprise",
    show_default=True,
    help="What is to be certified.",
)
@click.option(
    "--agency", "agency_id", help="Member agency id (for --class agency, auditor or service)."
)
@json_option
@pass_ctx
def apply(
    ctx: Ctx,
    uscc: str | None,
    name: str | None,
    subject_class: str,
    agency_id: str | None,
    as_json: bool,
) -> None:
    """Apply for a certificate; an RA officer vets the application.

    \b
    An enterprise applies with its USCC and legal name:
      eport apply --uscc 91350100M000100Y43 --name "Xiamen Harbour Trading Co., Ltd."
    The check character of the USCC is verified here and again by the CA (a code
    typed in full width, ９１３５…, is read as the same code).
    Keep the application id: the officer approves it and gives you a one-time code.
    An enterprise holds one legal-person certificate: while one is in force (not
    expired or revoked; on hold counts), renew it (eport renew) rather than apply,
    or have it revoked first (a lost key: an RA officer, --reason keyCompromise).
    """
    body: dict[str, Any] = {"subject_class": subject_class}
    # an option the class does not take was dropped without a word: an agency's
    # application "with" a USCC was sent without it
    if subject_class == "enterprise":
        if not uscc:
            raise click.UsageError("Missing option '--uscc' (an enterprise applies with it).")
        if agency_id:
            raise click.UsageError("--agency goes with --class agency, auditor or service")
        body.update(uscc=str(USCC.parse(uscc)), legal_name=name)
    else:
        if not agency_id:
            raise click.UsageError(f"Missing option '--agency' (for --class {subject_class}).")
        if uscc:
            raise click.UsageError("--uscc goes with --class enterprise (the default) only")
        body["agency_id"] = agency_id
        body["service_host" if subject_class == "service" else "person_name"] = name
    app = ctx.client().call("POST", "/ca/v1/applications", body)
    emit(
        as_json,
        app,
        f"Application {app['id']} submitted ({app['state']}).\n"
        "An RA officer of a member agency will vet it; to see where it stands:\n"
        f"  eport application show {app['id']}",
    )


@cli.group("application")
def application_group() -> None:
    """Your application: where it stands (no credentials needed, only its id)."""


@application_group.command("show")
@click.argument("app_id", callback=application_id)
@json_option
@pass_ctx
def application_show(ctx: Ctx, app_id: str, as_json: bool) -> None:
    """Show whether APP_ID is pending, approved or rejected (and why).

    \b
    An approved application's one-time enrollment code comes from the RA
    officer, over a separate channel; it is never shown here.

    \b
      eport application show app_bibk3oqb5wcrvrjo
    """
    doc = ctx.client().call("GET", f"/ca/v1/applications/{quote(app_id, safe='')}")
    state, since = doc["state"], doc["decided_at"] or doc["created_at"]
    lines = [f"Application {doc['id']} ({doc['subject_class']}): {state} since {since}"]
    if state == "rejected":
        lines.append(f"  reason: {doc['reason']}")
    elif state == "approved" and doc["subject_class"] == "operator":
        # An enterprise's authorization: its code comes from the enterprise, never from
        # an RA officer, who is refused (roles probe, session 27)
        lines.append(
            "  enroll with the code your enterprise gave you (eport enroll --code CODE "
            "--profile operator ...), unless a certificate was issued on it already"
        )
        lines.append(
            "  for a lapsed, lost or withdrawn code, the enterprise authorizes you again "
            '(eport operator add --id ID --name "…"), which gives a new one'
        )
    elif state == "approved":
        # The answer does not say whether its code was used: both cases are named
        lines.append(
            "  enroll with the code the RA officer gives you (eport enroll --code CODE ...), "
            "unless a certificate was issued on it already"
        )
        # Nor does it say whether the code is still live: name the way back from a lapsed one
        lines.append(
            "  a code lapses (7 days after it is given, by default); for a lapsed or lost "
            f"one, an RA officer gives a new one (eport ra new-code {doc['id']})"
        )
    else:
        until = doc.get("pending_until")  # absent from a server of an earlier release
        lines.append(
            "  an RA officer of a member agency will vet it"
            + (f"; unless approved by {until}, apply again" if until else "")
        )
    emit(as_json, doc, "\n".join(lines))


def _write_new_key(out: Path, key: Any, pw: bytes) -> list[Path]:
    """Write the new key (encrypted) to OUT/key.pem before any request spends a code or
    a renewal: an --out that cannot be written is said first, in one line. Returns the
    directories made for it (innermost first), for :func:`_undo`."""
    key_file = out / "key.pem"
    made: list[Path] = []
    try:
        made = [d for d in (out, *out.parents) if not d.exists()]
        out.mkdir(parents=True, exist_ok=True)
        keyfiles.write_key(key_file, key, pw)
    except OSError as exc:
        _undo(key_file, made)
        raise CLIError(f"cannot write {key_file}: {exc.strerror or exc}") from None
    return made


def _undo(key_file: Path, made: list[Path]) -> None:
    """Remove what :func:`_write_new_key` wrote: the key file and the directories it made."""
    # (write_private removes its own temporary file when it fails)
    with contextlib.suppress(OSError):  # never written: its directory was not made
        key_file.unlink(missing_ok=True)
    for d in made:  # innermost first; a directory something else wrote into stays
        try:
            d.rmdir()
        except OSError:
            break


def _write_outputs(
    out: Path, key: Any, pw: bytes, result: dict[str, Any], p12: bool
) -> dict[str, str]:
    """Write the certificate and chain (and bundle.p12) beside the key
    :func:`_write_new_key` wrote."""
    files = {"key": out / "key.pem", "certificate": out / "cert.pem", "chain": out / "chain.pem"}
    _write_answer(files, result)
    if p12:
        cert = x509.load_pem_x509_certificate(result["certificate"].encode())
        chain = x509.load_pem_x509_certificates(result["chain"].encode())
        files["p12"] = out / "bundle.p12"
        keyfiles.write_p12(files["p12"], key, cert, chain, pw, f"eport-{result['serial']}")
        if not keyfiles.p12_passphrase_ok(pw):  # a kept key's passphrase: too late to refuse
            click.secho(
                f"WARNING: {files['p12']}: {keyfiles.P12_NOT_ASCII}; for Java, export one "
                f"with an ASCII passphrase: openssl pkcs12 -export -inkey {files['key']} "
                f"-in {files['certificate']} -certfile {files['chain']} -out bundle.p12",
                fg="yellow",
                err=True,
            )
    return {k: str(v) for k, v in files.items()}


def _write_answer(files: dict[str, Path], result: dict[str, Any]) -> None:
    """The chain, then the certificate, each whole or not at all (a temporary file,
    fsync, rename): ``cert.pem``, written last, says the CA's answer arrived. Written in
    place, a run killed (or a power cut) after the issuance left an empty ``cert.pem``,
    and the same command again refused it as existing."""
    from ca.custody_files import write_durably

    write_durably(files["chain"], result["chain"].encode())
    write_durably(files["certificate"], result["certificate"].encode())


def _answer_received(cert_file: Path) -> bool:
    """Whether OUT/cert.pem holds the CA's answer. One that is there but holds no
    certificate (empty or cut short: a run of an earlier release killed while writing
    it) is an answer not received: the same command again fetches it with the kept key."""
    if not _exists(cert_file):
        return False
    try:
        x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError:
        return False
    except OSError:
        return True  # there, and not ours to overwrite: refused as existing
    return True


def _refuse_p12_passphrase(p12: bool, pw: bytes, change: str) -> None:
    """Before a key is made or a code used: --p12 with a passphrase Java cannot open."""
    if p12 and not keyfiles.p12_passphrase_ok(pw):
        raise CLIError(f"--p12: {keyfiles.P12_NOT_ASCII}: {change}, or leave out --p12")


def _submit_keeping_key(
    submit: Callable[[], dict[str, Any]], where: str, forget: Callable[[], None] | None
) -> dict[str, Any]:
    """``submit()`` the CSR of a key already written (``where`` it is kept, for the
    message): the CA's answer. No answer (connection error, timeout, 5xx) keeps the key,
    as the CA may have issued; a refusal (4xx) calls ``forget`` to delete a new key (and
    what was made for it; None for a key kept by an earlier attempt): nothing was issued
    for it."""
    try:
        return submit()
    except RemoteError as err:
        if err.status >= 500 and err.problem.get("type") in _REFUSED_UNSIGNED:
            raise CLIError(
                f"{err}; nothing was issued: the new key is kept {where}; run the same "
                "command again once the CA can sign"
            ) from None
        if err.status >= 500:
            raise _answer_lost(err, where) from None
        if forget is not None:
            forget()
        raise
    except NotSent as err:
        # No connection was made: the CA has not seen the request, so it issued nothing
        if forget is not None:
            forget()
            raise CLIError(f"{err}; nothing was sent, so nothing was issued") from None
        raise CLIError(f"{err}; nothing was sent: the key stays {where} for the next run") from None
    except ForeignAnswer as err:
        if not 400 <= err.status < 500:  # a proxy's 502 page, say: the CA may have answered
            raise _answer_lost(err, where) from None
        # Refused by a server that is not the CA (or a proxy that did not forward it)
        if forget is not None:
            forget()
            raise CLIError(f"{err}; the CA did not get it, so nothing was issued") from None
        raise CLIError(
            f"{err}; the CA did not get it: the key stays {where} for the next run"
        ) from None
    except CLIError as err:  # no answer at all
        raise _answer_lost(err, where) from None


_REFUSED_UNSIGNED = frozenset(
    f"urn:eport:problem:{slug}"
    for slug in (
        "sealed",
        "key-unavailable",
        "key-missing",
        "issuer-revoked",
        "issuer-unavailable",
        "issuer-expired",
        "schema-upgraded",
        "storage-full",
        "database-damaged",
    )
)
"""Problems the CA answers before it signs anything, or before anything of the issuance
is stored (a full disk rolls the issuance back whole; a damaged database writes
nothing): no certificate can have been issued. A 507 said the CA "may have issued the
certificate" (emergency-plan probe, session 27)."""


def _answer_lost(err: CLIError, where: str) -> CLIError:
    return CLIError(
        f"{err}; the CA may have issued the certificate before the answer was lost: the new "
        f"key is kept {where}; run the same command again to get the certificate"
    )


def _kept_key(
    path: Path, pw: bytes | None, passphrase_file: Path | None
) -> tuple[Any, bytes | None]:
    """The key an earlier renewal kept in ``path`` and its passphrase: ``pw`` (the
    current key's, which a renewal encrypts the new key with) if it opens it, else asked."""
    if pw is not None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            return serialization.load_pem_private_key(path.read_bytes(), pw), pw
    return keyfiles.key_and_passphrase(path, passphrase_file)


def _warn_kept_type(key: Any, key_type: str | None) -> None:
    """A --key-type given for a run that goes on with an earlier attempt's kept key (its
    certificate may be issued already): say that the kept key's type is used, not the one
    asked for (it was ignored without a word: enrollment probe, F4)."""
    from click.core import ParameterSource

    from ca.keys import KeyType

    given = click.get_current_context().get_parameter_source("key_type")
    if key_type is None or given is not ParameterSource.COMMANDLINE:
        return
    kept = KeyType.of(key).value
    if kept != key_type:
        click.secho(
            f"WARNING: --key-type {key_type} is not used: the kept key is {kept} (the CA may "
            "have certified it already); remove the directory's key.pem for a new key once "
            "you know no certificate was issued for it",
            fg="yellow",
            err=True,
        )


def _refuse_overwrite(out: Path) -> None:
    for name in ("key.pem", "cert.pem"):
        if _exists(out / name):
            raise CLIError(f"{out / name} exists; choose another --out directory")


def _exists(path: Path) -> bool:
    """Whether ``path``, a file a command is to write, exists already; a path that cannot
    be looked at (a directory that may not be searched, a name too long) cannot be
    written either: one line naming it, before anything is made or sent (Path.exists
    raised PermissionError and OSError(ENAMETOOLONG), an 'unexpected error')."""
    try:
        return path.exists()
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None


@cli.command()
@click.option(
    "--code",
    required=True,
    callback=not_blank,
    help="The one-time enrollment code from the RA officer or your enterprise.",
)
@click.option(
    "--profile",
    required=True,
    callback=not_blank,
    help="Certificate profile: enterprise, operator, agency, auditor, service-tls.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for key.pem, cert.pem, chain.pem (and bundle.p12).",
)
@click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default="p256",
    show_default=True,
    help="Algorithm of the new key.",
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Passphrase for the new key, at least 8 characters (else EPORT_PASSPHRASE, "
    "else a prompt, or a pipe's first line, waited for EPORT_PIPE_WAIT_SECONDS, 30).",
)
@click.option(
    "--p12",
    is_flag=True,
    help="Also write bundle.p12 (PKCS#12, same passphrase), for import into a browser or "
    "key store. Its integrity MAC takes 2,048 PBKDF iterations, so the passphrase holds out "
    "less long against guessing than key.pem's: delete the bundle once imported. The "
    "passphrase must be ASCII: Java's key stores open no other bundle.",
)
@click.option(
    "--pkcs11-uri",
    metavar="URI",
    help="Generate the key in this PKCS#11 token instead (RFC 7512: "
    "'pkcs11:token=LABEL?pin-source=file:PATH'); OUT/key.uri then names it.",
)
@json_option
@pass_ctx
def enroll(
    ctx: Ctx,
    code: str,
    profile: str,
    out: Path,
    key_type: str,
    passphrase_file: Path | None,
    p12: bool,
    pkcs11_uri: str | None,
    as_json: bool,
) -> None:
    """Generate a key here, send a CSR with a one-time code, save the certificate.

    The private key never leaves this machine: it is written encrypted (PKCS#8,
    PBKDF2-HMAC-SHA256 at 600,000 iterations) to OUT/key.pem with mode 0600; only
    the PKCS#10 request is sent. The CA builds the certificate's subject from the
    vetted application, not the CSR.
    With --pkcs11-uri the key is made in the token and never leaves it: the CSR is
    signed there, and OUT/key.uri (the key's URI, without any PIN) replaces key.pem;
    pass it to --key (or --pkcs11-uri) of signed commands and `eport login`.

    \b
    The key (or OUT/key.uri) is written before the CSR is sent. If no answer
    comes (the server stopped, the connection dropped, a 5xx), the key is kept
    (OUT/key.pem, or the token key OUT/key.uri names), as the CA may have
    issued the certificate: the same command again (same code, same OUT) sends
    that key's CSR again and saves the certificate the CA issued for it, or
    enrolls it if none was. A refusal (4xx), or a server that could not be reached
    at all (nothing was sent), deletes the new key. An enterprise
    code is refused (409, the code stays unused) while the enterprise holds an
    enterprise certificate in force: it holds one at a time.

    \b
      eport enroll --code 0AWT-8B9X-355M-QP7T-YBHB-Y1EN-EVK1-4Y77 --profile enterprise --out ./ent
      eport enroll --code CODE --profile operator --out ./li-wei --key-type ed25519 --p12
    """
    kept_file = out / ("key.pem" if pkcs11_uri is None else "key.uri")
    kept = _exists(kept_file) and not _answer_received(out / "cert.pem")
    if kept and pkcs11_uri is not None:  # the code is not checked first, as below
        _enroll_in_token(ctx, code, profile, out, key_type, pkcs11_uri, p12, as_json)
        return
    if kept:
        # An earlier attempt's key, whose answer was lost: its code may be used already
        # (by this key), so it is not checked first; the CA answers with the certificate.
        key, kept_pw = keyfiles.key_and_passphrase(out / "key.pem", passphrase_file)
        pw, made = kept_pw or b"", []
        click.echo(f"Using the key kept in {out / 'key.pem'} by an earlier attempt", err=True)
        _warn_kept_type(key, key_type)
    else:
        _refuse_overwrite(out)
        # A used, expired or mistyped code (or profile) is said now, before a key is made
        # and its passphrase asked for; the enrollment below decides again.
        ctx.client().call("POST", "/ca/v1/enroll/check", {"code": code, "profile": profile})
        if pkcs11_uri is not None:
            _enroll_in_token(ctx, code, profile, out, key_type, pkcs11_uri, p12, as_json)
            return
        pw = keyfiles.passphrase(passphrase_file, new=True, what="new key")
        _refuse_p12_passphrase(p12, pw, "choose an ASCII passphrase (the code is still unused)")
        key = keyfiles.new_key(key_type)
        made = _write_new_key(out, key, pw)
    csr = keyfiles.csr_for(key).decode()
    result = _submit_keeping_key(
        lambda: ctx.client().call(
            "POST", "/ca/v1/enroll", {"code": code, "profile": profile, "csr": csr}
        ),
        f"in {out / 'key.pem'}",
        None if kept else functools.partial(_undo, out / "key.pem", made),
    )
    files = _write_outputs(out, key, pw, result, p12)
    emit(
        as_json,
        {**result, "files": files},
        f"Issued {result['profile']} certificate {result['serial']}\n"
        f"  subject: {result['subject']}\n"
        f"  valid until: {result['not_after']}\n"
        "  files: " + ", ".join(files.values()),
    )


def _key_in_token(
    token: Any, key_type: str, out: Path, p12: bool, submit: Callable[[str], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Path], str]:
    """Make a key pair in the PKCS#11 token, write ``key.uri`` naming it, send ``submit``
    its CSR (signed in the token) and write ``cert.pem`` and ``chain.pem`` in ``out``:
    (the CA's answer, the files, the key's URI). A refused request (4xx) deletes the key
    it made; with no answer (connection error, timeout, 5xx) the key is kept, as the CA
    may have issued, and the same command again (OUT/key.uri and no cert.pem) uses it."""
    from ca import pkcs11
    from ca.keys import KeyType

    if p12:
        raise CLIError("--p12 needs the private key, which a PKCS#11 token never gives out")
    key_file = out / "key.uri"
    kept = _exists(key_file) and not _answer_received(out / "cert.pem")
    made: list[Path] = []
    if kept:
        uri = _kept_token_key(key_file, token)
        click.echo(f"Using the token key kept by an earlier attempt: {uri.without_pin()}", err=True)
    else:
        if key_file.exists():
            raise CLIError(f"{key_file} exists; choose another --out directory")
        # --out is made before the key and the request, as for a key file (_write_new_key)
        made = [d for d in (out, *out.parents) if not d.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _undo(key_file, made)
            raise CLIError(f"cannot write {key_file}: {exc.strerror or exc}") from None
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        # The time tells keys apart for a person listing the token; the suffix for two
        # made within one second (their URIs differ by id as well)
        label = f"eport {stamp} {secrets.token_hex(3)}"
        try:
            uri = pkcs11.generate(token, KeyType(key_type), label).uri
        except BaseException:
            _undo(key_file, made)
            raise
    shown = str(uri.without_pin())
    try:
        csr = keyfiles.csr_for(keyfiles.token_key(str(uri))).decode()
        if not kept:
            key_file.write_text(shown + "\n")
    except BaseException:
        if not kept:
            pkcs11.destroy(uri)  # nothing was sent: leave the token as it was
            _undo(key_file, made)
        raise

    def forget() -> None:
        pkcs11.destroy(uri)
        _undo(key_file, made)

    result = _submit_keeping_key(
        lambda: submit(csr),
        f"in the token as {shown} (named in {key_file})",
        None if kept else forget,
    )
    files = {"key": key_file, "certificate": out / "cert.pem", "chain": out / "chain.pem"}
    _write_answer(files, result)
    return result, files, shown


def _kept_token_key(key_file: Path, token: Any) -> Any:
    """The token key OUT/key.uri names (kept by an attempt whose answer was lost), reached
    through ``token``: its module and PIN, as given to this command (key.uri holds no
    PIN value)."""
    from ca import pkcs11

    try:
        kept = pkcs11.Pkcs11Uri.parse(key_file.read_text())
    except OSError as exc:
        raise CLIError(f"cannot read {key_file}: {exc.strerror}") from None
    if kept.id is None or kept.object is None:
        raise CLIError(f"{key_file} names no key (object= and id=); choose another --out")
    return token.with_key(kept.object, kept.id)


def _enroll_in_token(
    ctx: Ctx, code: str, profile: str, out: Path, key_type: str, uri: str, p12: bool, j: bool
) -> None:
    from ca import pkcs11

    result, files, key_uri = _key_in_token(
        pkcs11.Pkcs11Uri.parse(uri),
        key_type,
        out,
        p12,
        lambda csr: ctx.client().call(
            "POST", "/ca/v1/enroll", {"code": code, "profile": profile, "csr": csr}
        ),
    )
    emit(
        j,
        {**result, "files": {k: str(v) for k, v in files.items()}},
        f"Issued {result['profile']} certificate {result['serial']} for a key in the token\n"
        f"  subject: {result['subject']}\n"
        f"  valid until: {result['not_after']}\n"
        f"  key: {key_uri}\n"
        "  files: " + ", ".join(str(v) for v in files.values()),
    )


@cli.command()
@identity_options("current certificate holder")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory for the new files (default: a 'renewed-SERIAL' directory beside --cert).",
)
@click.option(
    "--key-type",
    type=click.Choice(KEY_TYPES),
    default=None,
    help="Algorithm of the new key (default: the current key's, as a renewal keeps it).",
)
@click.option(
    "--p12",
    is_flag=True,
    help="Also write bundle.p12 (as eport enroll --p12: delete it once imported).",
)
@click.option(
    "--new-pkcs11-uri",
    metavar="URI",
    help="Make the new key in this PKCS#11 token (RFC 7512 URI). By default the new key "
    "goes where the current one is: in its token when --key names a token key.",
)
@json_option
@pass_ctx
def renew(
    ctx: Ctx,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    out: Path | None,
    key_type: str | None,
    p12: bool,
    new_pkcs11_uri: str | None,
    as_json: bool,
) -> None:
    """Get a new certificate for a new key, with the same vetted subject.

    Renew before the current certificate expires: an expired one signs nothing,
    so its holder enrolls again with a new code instead (an RA officer's
    `eport ra new-code APP_ID`; for an operator, the enterprise's
    `eport operator add`).

    The current certificate stays valid until it expires or is revoked, so
    services move to the new one without a gap. An enterprise holds one
    legal-person certificate: it renews only while no other one is in force, so
    the old one does not renew a second time, and the new one renews once the
    old one is revoked (eport revoke --serial OLD --reason superseded).

    The request is signed with the current key; the new key is generated here
    and encrypted with the same passphrase (asked once, for the current key).
    When the current key is in a PKCS#11 token (--key key.uri or a pkcs11: URI),
    or with --new-pkcs11-uri, the new key is generated in the token instead and
    OUT/key.uri names it; a refused renewal deletes it from the token again.

    \b
    The new key (or OUT/key.uri) is written before the request is sent. If no
    answer comes (the server stopped, the connection dropped, a 5xx), it is kept,
    as the CA may have issued the certificate: the same command again (same
    --cert, same OUT) sends that key's CSR again, signed anew, and saves the
    certificate the CA issued for it, or renews with it if none was. A refusal
    (4xx), or a server that could not be reached at all (nothing was sent), deletes
    the new key.

    \b
      eport renew --cert ./ent/cert.pem --key ./ent/key.pem      (new files: ./ent/renewed-SERIAL/)
      eport renew --cert ./ent/cert.pem --key ./ent/key.pem --out ./ent-2027
    """
    ident, current_pw = keyfiles.identity_and_passphrase(cert_file, key_file, passphrase_file)
    serial = format(ident.chain[0].serial_number, "x")
    if key_type is None:
        from ca.keys import KeyType

        # the current key's type: an RSA service key, a P-384 or Ed25519 one came back
        # P-256 without a word (key-type probe, F2)
        key_type = KeyType.of(ident.chain[0].public_key()).value
    out = out or cert_file.parent / f"renewed-{serial}"
    token = _token_for_new_key(ident.key, new_pkcs11_uri)
    kept = token is None and _exists(out / "key.pem") and not _answer_received(out / "cert.pem")
    if not kept:
        _refuse_overwrite(out)
    if token is not None:
        _renew_in_token(ctx, ident, serial, out, key_type, token, p12, as_json)
        return
    if kept:
        # An earlier attempt's key, whose answer was lost: the CA answers with the
        # certificate it issued for it, if it did. Encrypted like the current key, it
        # opens with the passphrase typed for that one.
        key, kept_pw = _kept_key(out / "key.pem", current_pw, passphrase_file)
        pw, made = kept_pw or b"", []
        click.echo(f"Using the key kept in {out / 'key.pem'} by an earlier attempt", err=True)
        _warn_kept_type(key, key_type)
    else:
        # The passphrase that opened the current key (typed once); a key file in the
        # clear gets a new one, asked twice as for an enrollment.
        pw = current_pw or keyfiles.passphrase(passphrase_file, new=True, what="new key")
        _refuse_p12_passphrase(
            p12,
            pw,
            "the new key takes the current key's passphrase: change it first "
            f"(eport key passwd {key_file})"
            if current_pw
            else "choose an ASCII passphrase",
        )
        key = keyfiles.new_key(key_type)
        made = _write_new_key(out, key, pw)
    result = _submit_keeping_key(
        lambda: ctx.client().call(
            "POST", "/ca/v1/renew", {"csr": keyfiles.csr_for(key).decode()}, ident
        ),
        f"in {out / 'key.pem'}",
        None if kept else functools.partial(_undo, out / "key.pem", made),
    )
    files = _write_outputs(out, key, pw, result, p12)
    emit(
        as_json,
        {**result, "files": files, "previous_serial": serial},
        f"Renewed: new certificate {result['serial']} (was {serial}), {key_type} key\n"
        f"  valid until: {result['not_after']}\n"
        "  files: " + ", ".join(files.values()),
    )


def _token_for_new_key(current: Any, uri: str | None) -> Any:
    """The PKCS#11 token a renewal makes its new key in (a :class:`ca.pkcs11.Pkcs11Uri`
    naming the token only), or None for a software key."""
    if uri is not None:
        from ca import pkcs11

        return pkcs11.Pkcs11Uri.parse(uri).token_only()
    signer = getattr(current, "signer", None)
    if signer is not None and hasattr(signer, "uri"):
        return signer.uri.token_only()  # the current key is in a token: so is the new one
    return None


def _renew_in_token(
    ctx: Ctx,
    ident: Identity,
    serial: str,
    out: Path,
    key_type: str,
    token: Any,
    p12: bool,
    as_json: bool,
) -> None:
    result, files, key_uri = _key_in_token(
        token,
        key_type,
        out,
        p12,
        lambda csr: ctx.client().call("POST", "/ca/v1/renew", {"csr": csr}, ident),
    )
    emit(
        as_json,
        {
            **result,
            "files": {k: str(v) for k, v in files.items()},
            "previous_serial": serial,
            "key_uri": key_uri,
        },
        f"Renewed: new certificate {result['serial']} (was {serial}) for a key in the token\n"
        f"  valid until: {result['not_after']}\n"
        f"  key: {key_uri}\n"
        "  files: " + ", ".join(str(v) for v in files.values()),
    )


# -- RA ---------------------------------------------------------------------------------------


@cli.group()
def ra() -> None:
    """RA officers of member agencies: vet applications (every call is signed)."""


@ra.command("list")
@identity_options("RA officer")
@click.option(
    "--state",
    type=click.Choice(["pending", "approved", "rejected", "all"]),
    default="pending",
    show_default=True,
    help="Which applications to list.",
)
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="At most this many applications (one page).",
)
@after_option("applications")
@json_option
@pass_ctx
def ra_list(
    ctx: Ctx,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    state: str,
    limit: int,
    after: str,
    as_json: bool,
) -> None:
    """List applications (pending by default), oldest first, one page at a time.

    The CODE column is the state of the code given last: live, used, expired,
    withdrawn, or - (none yet). An approved application whose code expired or
    was lost gets a new one with eport ra new-code APP_ID. When more applications
    follow the page, the --after CURSOR that lists them is said on standard error
    (next with --json). Applications decided meanwhile by another officer leave
    the list without moving the next page: none is skipped or shown twice.

    \b
      eport ra list --cert officer.pem --key officer.key
      eport ra list --state approved --limit 1000 --cert officer.pem --key officer.key
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    query: dict[str, str | int] = {"state": state, "limit": limit}
    if after:
        query["after"] = after
    path = "/ca/v1/ra/applications?" + urlencode(query)
    doc = ctx.client().call("GET", path, identity=ident)
    check_page(doc, after)
    apps = doc["applications"]
    lines = [f"{'ID':<24} {'STATE':<9} {'CODE':<10} {'CLASS':<11} {'USCC':<19} NAME"]
    for a in apps:
        subj = a["subject"]
        # whom the certificate will name: an operator's application also carries its
        # enterprise's legal name, which the USCC column already stands for
        name = next((subj[k] for k in _NAME_KEYS if subj.get(k)), "")
        code = (a.get("code") or {}).get("state", "-")
        lines.append(
            f"{a['id']:<24} {a['state']:<9} {code:<10} {a['subject_class']:<11} "
            f"{a['uscc'] or '-':<19} {name}"
        )
    if not apps:
        lines = [f"No {state} applications" + (" after that page." if after else ".")]
    emit(as_json, doc, "\n".join(lines))
    more_hint(as_json, doc, "applications")


def _code_call(
    ctx: Ctx,
    path: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    profiles: tuple[str, ...],
) -> dict[str, Any]:
    """A signed POST under /ca/v1/ra/applications/ that answers with a code."""
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    body = {"profiles": list(profiles)} if profiles else {}
    doc: dict[str, Any] = ctx.client().call("POST", f"/ca/v1/ra/applications/{path}", body, ident)
    return doc


def _withdrew(doc: dict[str, Any]) -> str:
    """The note "(withdrew N unused codes)" when any were withdrawn for the new one."""
    n = doc.get("withdrawn_codes", 0)
    return f" (withdrew {n} unused code{'s' if n != 1 else ''})" if n else ""


def _code_lines(doc: dict[str, Any]) -> str:
    return (
        f"Enrollment code: {doc['enrollment_code']}\n"
        f"  profiles: {', '.join(doc['profiles'])}\n"
        f"  expires: {doc['expires_at']}"
    )


@ra.command("approve")
@click.argument("app_id", callback=application_id)
@identity_options("RA officer")
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    help="Limit the code to this profile (repeatable; default: every profile of the "
    "application's class).",
)
@json_option
@pass_ctx
def ra_approve(
    ctx: Ctx,
    app_id: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    profiles: tuple[str, ...],
    as_json: bool,
) -> None:
    """Approve APP_ID and print its one-time enrollment code.

    Hand the code to the applicant over a separate channel; it is shown once,
    stored only as a hash, and expires (7 days by default). An enterprise
    application is refused while its USCC holds an enterprise certificate in
    force (on hold counts; revoke it first, or its holder renews it, once an
    officer resumes it if it is on hold), or while
    another of its applications holds a live code (withdraw that one first).

    \b
      eport ra approve app_bibk3oqb5wcrvrjo --cert officer.pem --key officer.key
      eport ra approve APP_ID --profile enterprise --cert officer.pem --key officer.key
    """
    doc = _code_call(ctx, f"{app_id}/approve", cert_file, key_file, passphrase_file, profiles)
    emit(as_json, doc, f"Approved {app_id}.\n" + _code_lines(doc), _code_lost(app_id))


@ra.command("new-code")
@click.argument("app_id", callback=application_id)
@identity_options("RA officer")
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    help="Limit the code to this profile (repeatable; default: those of the application's "
    "last code).",
)
@json_option
@pass_ctx
def ra_new_code(
    ctx: Ctx,
    app_id: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    profiles: tuple[str, ...],
    as_json: bool,
) -> None:
    """Give approved application APP_ID a new one-time enrollment code.

    For a code that was lost or expired before it was used: the application's
    unused codes stop working at once, so only the new one is live. Refused
    while a certificate issued on the application is in force: its holder
    renews with it (eport renew), or, for a lost key, an officer revokes it
    first (eport revoke --serial SERIAL --reason keyCompromise); for an
    enterprise, also while its USCC holds another enterprise certificate in
    force. Not for an operator: its enterprise authorizes it again (eport
    operator add). Recorded in the audit log.

    \b
      eport ra new-code app_bibk3oqb5wcrvrjo --cert officer.pem --key officer.key
    """
    doc = _code_call(ctx, f"{app_id}/code", cert_file, key_file, passphrase_file, profiles)
    emit(
        as_json,
        doc,
        f"New code for {app_id}{_withdrew(doc)}.\n" + _code_lines(doc),
        _code_lost(app_id),
    )


def _code_lost(app_id: str) -> str:
    """What an officer does about an enrollment code that could not be shown."""
    return (
        f"; the enrollment code made for {app_id} is shown nowhere: an RA officer gets "
        f"a new one with eport ra new-code {app_id} (the lost one then stops working)"
    )


_NAME_KEYS = ("operator_name", "person_name", "legal_name", "service_host")

reason_option = click.option(
    "--reason",
    required=True,
    callback=not_blank,
    help="Why (up to 500 characters, no control characters; line breaks and runs of blanks "
    "become one space); recorded, and shown to the applicant (eport application show).",
)


@ra.command("reject")
@click.argument("app_id", callback=application_id)
@identity_options("RA officer")
@reason_option
@json_option
@pass_ctx
def ra_reject(
    ctx: Ctx,
    app_id: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    reason: str,
    as_json: bool,
) -> None:
    """Reject APP_ID with a reason.

    \b
      eport ra reject APP_ID --reason "the name differs from the business licence" \\
          --cert officer.pem --key officer.key
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    doc = ctx.client().call(
        "POST", f"/ca/v1/ra/applications/{app_id}/reject", {"reason": reason}, ident
    )
    emit(as_json, doc, f"Rejected {app_id}: {doc['reason']}")


@ra.command("withdraw")
@click.argument("app_id", callback=application_id)
@identity_options("RA officer")
@reason_option
@json_option
@pass_ctx
def ra_withdraw(
    ctx: Ctx,
    app_id: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    reason: str,
    as_json: bool,
) -> None:
    """Withdraw the approval of APP_ID before its applicant enrolled.

    For an approval found wrong after the code went out: the application's
    unused codes stop working at once and it reads as rejected, with the
    reason. Refused while a certificate issued on it is in force: revoke that
    first (eport revoke --serial SERIAL --reason REASON). Recorded in the audit
    log.

    \b
      eport ra withdraw APP_ID --reason "approved under the wrong USCC" \\
          --cert officer.pem --key officer.key
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    doc = ctx.client().call(
        "POST", f"/ca/v1/ra/applications/{app_id}/withdraw", {"reason": reason}, ident
    )
    emit(as_json, doc, f"Withdrew the approval of {app_id}: {doc['reason']}")


# -- operators --------------------------------------------------------------------------------


@cli.group()
def operator() -> None:
    """An enterprise's legal person authorizes its operators (add), sees the
    authorizations not enrolled yet (list) and withdraws one (withdraw)."""


@operator.command("add")
@click.option(
    "--name",
    required=True,
    callback=not_blank,
    help="The operator's full name, at most 64 characters (the certificate's CN).",
)
@click.option(
    "--id",
    "operator_id",
    required=True,
    callback=not_blank,
    help="The operator's id at the enterprise (the certificate's serialNumber).",
)
@identity_options("enterprise (legal person)")
@json_option
@pass_ctx
def operator_add(
    ctx: Ctx,
    name: str,
    operator_id: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Authorize an operator; prints the operator's one-time enrollment code.

    The operator then runs:

    \b
      eport enroll --code CODE --profile operator --out DIR

    Run it again for the same --id when the code was lost or expired: the
    earlier unused code stops working, and the roles granted stay (it is the
    same authorization). Refused while a certificate of that operator id is in
    force: the operator renews it (eport renew), or you revoke it first (eport
    revoke --serial SERIAL --reason REASON). Once a certificate was issued on
    it, authorizing the id again (another person) is a new authorization:
    roles granted before do not carry over (eport roles grant again).

    \b
      eport operator add --name "Li Wei" --id E1024 --cert ent/cert.pem --key ent/key.pem
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    doc = ctx.client().call(
        "POST", "/ca/v1/operators", {"name": name, "operator_id": operator_id}, ident
    )
    emit(
        as_json,
        doc,
        f"Operator {name} ({operator_id}) authorized{_withdrew(doc)}.\n"
        f"Enrollment code: {doc['enrollment_code']}\n"
        f"  expires: {doc['expires_at']}\n"
        f"  next: eport enroll --code {doc['enrollment_code']} --profile operator --out DIR\n"
        + _roles_note(doc, operator_id),
        f"; the operator's enrollment code is shown nowhere: run eport operator add again "
        f"with --id {operator_id} for a new one (the lost one then stops working)",
    )


def _roles_note(doc: dict[str, Any], operator_id: str) -> str:
    """What becomes of role grants: an authorization that continues an earlier one (the
    id authorized again before anyone enrolled) keeps them, else they are made anew."""
    if (doc.get("authorization") or {}).get("continues"):
        return f"  roles: those granted to {operator_id} stand (the same authorization)"
    return (
        f"  roles: eport roles grant --operator {operator_id} --role ROLE (grants made to "
        "an earlier holder of the id do not carry over)"
    )


@operator.command("list")
@identity_options("enterprise (legal person)")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most this many per page.",
)
@click.option(
    "--after",
    metavar="APP_ID",
    callback=lambda ctx, param, value: None if value is None else application_id(ctx, param, value),
    help="The last application id of the previous page (the one the page names).",
)
@json_option
@pass_ctx
def operator_list(
    ctx: Ctx,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    limit: int,
    after: str | None,
    as_json: bool,
) -> None:
    """List your operator authorizations not enrolled yet (a code given, no
    certificate issued on it): the ones `eport operator withdraw` takes back.
    CODE says whether its code is live or lapsed (authorize again: eport operator
    add with the same --id, which replaces it). Enrolled operators are in
    `eport cert list --uscc CODE`.

    \b
      eport operator list --cert ent/cert.pem --key ent/key.pem
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    query = f"?limit={limit}" + (f"&after={quote(after, safe='')}" if after else "")
    doc = ctx.client().call("GET", f"/ca/v1/operators{query}", identity=ident)
    rows = doc["operators"]  # by application id, the pages' order
    if not rows:
        text = "No operator authorization waits for its operator to enroll."
    else:
        lines = [f"{'APPLICATION':<22} {'OPERATOR':<16} {'CODE':<10} {'AUTHORIZED':<21} NAME"]
        lines += [
            f"{r['application']:<22} {r['operator_id']:<16} {r['code']['state']:<10} "
            f"{r['authorized_at']:<21} {r['name']}"
            for r in rows
        ]
        text = "\n".join(lines)
    emit(as_json, doc, text)
    more_hint(as_json, doc, "operator authorizations")


@operator.command("withdraw")
@click.argument("app_id", callback=application_id)
@identity_options("enterprise (legal person)")
@reason_option
@json_option
@pass_ctx
def operator_withdraw(
    ctx: Ctx,
    app_id: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    reason: str,
    as_json: bool,
) -> None:
    """Withdraw an operator authorization (APP_ID, from `eport operator list`)
    before the operator enrolled: its code stops working at once, and it reads as
    rejected with the reason. Refused once a certificate issued on it is in force:
    revoke that instead (eport revoke --serial SERIAL --reason affiliationChanged).
    Recorded in the audit log.

    \b
      eport operator withdraw APP_ID --reason "left the company before enrolling" \\
          --cert ent/cert.pem --key ent/key.pem
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    doc = ctx.client().call(
        "POST", f"/ca/v1/operators/{app_id}/withdraw", {"reason": reason}, ident
    )
    emit(
        as_json,
        doc,
        f"Withdrew the authorization of operator {doc['subject'].get('operator_id')} "
        f"({app_id}): {doc['reason']}",
    )


# -- status ---------------------------------------------------------------------------------

REASONS = [
    "keyCompromise",
    "cessationOfOperation",
    "affiliationChanged",
    "superseded",
    "privilegeWithdrawn",
    "unspecified",
]


def _invalidity_date(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--invalidity-date``: a date and time with its offset (RFC 5280 §5.3.2 records an
    instant; a bare local time would be read in some zone the user did not choose), sent
    in UTC; refused on the command line (exit 2) before a key is read. Whether it is in
    the future, or before the certificate's notBefore, is the server's to say."""
    if value is None:
        return None
    text = value.strip()
    try:
        when = datetime.datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date and time (2026-11-20T08:00:00Z)", ctx, param
        ) from None
    if when.tzinfo is None:
        raise click.BadParameter(
            f"{value!r} needs a time and its offset (2026-11-20T08:00:00Z or "
            "2026-11-20T16:00:00+08:00)",
            ctx,
            param,
        )
    try:
        return _utc(when)
    except OverflowError:
        raise click.BadParameter(
            f"{value!r} is out of range: in UTC it is not within the years 1 to 9999", ctx, param
        ) from None


def _utc(when: datetime.datetime) -> str:
    # isoformat: strftime's %Y writes the year 1 as "1", which no ISO 8601 reader takes
    # (CLI probe, session 27: a year before 1000 got a wrong refusal)
    return when.astimezone(datetime.UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


CASCADE_SHOWN = 10
"""Operator certificates a cessation's answer names by serial (the count says the rest)."""


def _status_text(doc: dict[str, Any]) -> str:
    line = f"Certificate {doc['serial']}: {doc['status'].replace('-', ' ')}"
    if doc.get("since"):
        line += f" since {doc['since']}"
    if doc.get("reason") and doc["status"] == "revoked":
        line += f" ({doc['reason']})"
    cascaded = doc.get("cascaded") or []
    if cascaded:
        # An enterprise may have thousands of operators: name the first few, count the rest.
        shown = ", ".join(cascaded[:CASCADE_SHOWN])
        rest = len(cascaded) - CASCADE_SHOWN
        more = f" and {rest} more (--json lists them all)" if rest > 0 else ""
        line += (
            f"\n  also revoked, the enterprise's {len(cascaded)} operator certificate"
            f"{'s' if len(cascaded) != 1 else ''}: {shown}{more}"
        )
    issuing = doc.get("issuing_ca_revoked")
    if isinstance(issuing, dict):
        line += (
            f"\n  its issuing CA {issuing.get('issuer')} was revoked at {issuing.get('at')}: "
            "OCSP, CRLs and eport status answer it revoked since then"
        )
    if doc.get("enterprise_still_in_force"):
        kept = ", ".join(doc["enterprise_still_in_force"])
        line += (
            f"\n  the enterprise's operators were kept: it still holds {kept} in force."
            "\n  If the enterprise has ceased, revoke that too with cessationOfOperation."
        )
    return line


def _target_serial(serial: str | None, ident: Identity) -> str:
    # Only a --serial left out means the signer's own certificate; an empty one (an unset
    # shell variable) is refused by not_blank before this.
    return serial if serial is not None else format(ident.chain[0].serial_number, "x")


@cli.command()
@click.option(
    "--serial",
    callback=hex_serial,
    help="Serial (hex) to revoke; default: the --cert certificate itself.",
)
@click.option(
    "--reason",
    type=click.Choice(REASONS),
    required=True,
    help="RFC 5280 reason code, always named: revocation is final (unspecified if none fits).",
)
@click.option(
    "--invalidity-date",
    callback=_invalidity_date,
    help=(
        "When the key was known or suspected compromised (ISO 8601 with its offset: "
        "2026-11-20T08:00:00Z or 2026-11-20T16:00:00+08:00; not in the future, not "
        "before the certificate's notBefore)."
    ),
)
@identity_options("RA officer, enterprise or certificate holder")
@json_option
@pass_ctx
def revoke(
    ctx: Ctx,
    serial: str | None,
    reason: str,
    invalidity_date: str | None,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Revoke a certificate for good (RFC 5280 §5.3.1).

    An RA officer may revoke any enterprise's or operator's certificate, and its
    own agency's officers', auditors' and services'; an enterprise its own and its
    operators' (cessationOfOperation on the enterprise's last certificate in
    force revokes every operator too, and withdraws their unused codes; while
    another one, say a renewal's, is in force, only this one is revoked and the
    answer names the other); anyone holding a certificate's key may revoke it
    with keyCompromise by signing with that very certificate. OCSP answers
    "revoked" as soon as this returns; the CRL follows within seconds.

    \b
      eport revoke --cert lost.pem --key lost.key --reason keyCompromise
      eport revoke --serial SERIAL --reason affiliationChanged --cert ent/cert.pem --key ent/key.pem
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    target = _target_serial(serial, ident)
    body: dict[str, Any] = {"reason": reason}
    if invalidity_date:
        body["invalidity_date"] = invalidity_date
    doc = ctx.client().call("POST", f"/ca/v1/certificates/{target}/revoke", body, ident)
    emit(as_json, doc, _status_text(doc))


@cli.command()
@click.option(
    "--serial",
    callback=hex_serial,
    help="Serial (hex) to suspend; default: the --cert certificate itself.",
)
@identity_options("RA officer, enterprise or certificate holder")
@json_option
@pass_ctx
def suspend(
    ctx: Ctx,
    serial: str | None,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Put a certificate on hold (certificateHold): a lost card or key.

    Relying parties see it as revoked (reason certificateHold) until an RA officer,
    or the enterprise for its operators, lifts the hold with `eport resume`.

    \b
      eport suspend --cert lost-card.pem --key lost-card.key       (its own)
      eport suspend --serial SERIAL --cert ent/cert.pem --key ent/key.pem
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    doc = ctx.client().call(
        "POST", f"/ca/v1/certificates/{_target_serial(serial, ident)}/suspend", {}, ident
    )
    emit(as_json, doc, _status_text(doc))


@cli.command()
@click.option(
    "--serial",
    required=True,
    callback=hex_serial,
    help="Serial (hex) of the certificate on hold.",
)
@identity_options("RA officer or enterprise")
@json_option
@pass_ctx
def resume(
    ctx: Ctx,
    serial: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Lift a hold (only from hold: a revocation is final).

    The certificate leaves the next CRL (RFC 5280 §5.3.1 removeFromCRL semantics)
    and OCSP answers good at once. A held certificate cannot lift its own hold.

    \b
      eport resume --serial SERIAL --cert officer.pem --key officer.key
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    doc = ctx.client().call("POST", f"/ca/v1/certificates/{serial}/resume", {}, ident)
    emit(as_json, doc, _status_text(doc))


@enum.unique
class StatusExit(enum.IntEnum):
    """``eport status``'s exit status for each answer, so that a script or a monitoring
    check (``eport status --cert C && deploy``) tells them apart without ``--json``: 0
    only for good, as ``openssl verify`` and ``systemctl is-active`` do. 1 (an error: no
    verified answer) and 2 (a usage error) are every command's; the statuses start at 3."""

    GOOD = 0
    REVOKED = 3
    """Revoked, or its issuing CA revoked on the root's CRL."""
    ON_HOLD = 4
    """certificateHold: suspended, and may be resumed."""
    UNKNOWN = 5
    """The responder knows no such certificate of its CA (RFC 6960 §2.2 "unknown")."""
    EXPIRED = 6
    """Not revoked (OCSP "good" says only that) but past its notAfter: it works nowhere."""


@cli.command()
@click.option(
    "--cert",
    "cert_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The certificate to check (PEM or DER).",
)
@click.option(
    "--issuer",
    "issuer_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Its issuer's certificate (default: chain.pem beside --cert, else the AIA caIssuers URL).",
)
@json_option
def status(cert_file: Path, issuer_file: Path | None, as_json: bool) -> None:
    """Ask the OCSP responder named in the certificate (AIA) for its status.

    The response's signature, responder delegation, CertID, nonce and freshness are
    verified before anything is printed; any doubt is an error, never "good".
    No credentials are needed. The status is printed (or the --json document) whenever
    a verified answer came, and the exit status says it too; without one, nothing is
    printed on standard output, only the error on standard error (exit 1).

    \b
      eport status --cert ./xiamen-harbour/cert.pem          (chain.pem beside it)
      eport status --cert partner.pem --issuer partner-ca.pem --json
      eport status --cert cert.pem && deploy                 (only if good)

    \b
    Exit status:
      0  good
      1  error: no verified answer (the responder unreachable or refusing, a bad
         signature or nonce, a file that cannot be read): the status is not known
      2  usage error (a mistyped command line)
      3  revoked (or its issuing CA is revoked on the root's CRL)
      4  on hold (certificateHold: suspended, may be resumed)
      5  unknown: the responder knows no such certificate of its CA
      6  expired: not revoked, but past its notAfter (it works nowhere)
    """
    import requests

    from ca.ocsp import Good, OnHold, Revoked
    from ca.ocsp_client import OCSPError, OCSPStatusSource, ocsp_url

    certs = keyfiles.load_certs(cert_file)
    cert = certs[0]
    try:
        # a certificate that names no responder has no status to ask: said first, not
        # after the user was sent to find its issuer ("give --issuer or ...")
        ocsp_url(cert)
    except OCSPError as exc:
        raise CLIError(exc.detail) from None
    candidates = certs[1:]
    if issuer_file is not None:
        candidates = keyfiles.load_certs(issuer_file)
    elif cert_file.with_name("chain.pem").exists():
        candidates += keyfiles.load_certs(cert_file.with_name("chain.pem"))
    if not candidates:
        candidates = [_fetch_ca_issuer(cert)]

    def post(url: str, body: bytes) -> bytes:
        try:
            r = fetch(
                "POST",
                url,
                data=body,
                headers={"Content-Type": "application/ocsp-request"},
                timeout=15,
            )
        except requests.RequestException as exc:
            raise CLIError(f"cannot reach the OCSP responder {url}: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise CLIError(f"the OCSP responder {url} answered HTTP {r.status_code}")
        return r.content

    serial = format(cert.serial_number, "x")
    doc: dict[str, Any]
    try:
        st = OCSPStatusSource(candidates, post).status(cert)
    except OCSPError as exc:
        if cert.not_valid_after_utc >= _certificate_clock():
            raise CLIError(exc.detail) from None
        # An expired certificate works nowhere, whatever a responder says; the responder
        # of an issuing CA that expired with it signs nothing (it said INTERNAL_ERROR, 1).
        after = _utc(cert.not_valid_after_utc)
        doc = {"serial": serial, "subject": dn_string(cert.subject)}
        doc.update(status="expired", not_after=after, responder=exc.detail)
        text = f"{serial}: expired at {after} (the responder gave no status: {exc.detail})"
        emit(as_json, doc, text)
        sys.exit(StatusExit.EXPIRED)
    doc = {"serial": serial, "subject": dn_string(cert.subject)}
    # The responder speaks for its issuing CA, not about it: a good answer, or a hold (which
    # could be lifted), stands only if the root's CRL does not revoke that CA (a quorum's
    # REVOKE-INTERMEDIATE); a certificate of a revoked CA is revoked for good.
    held_or_good = isinstance(st, Good | OnHold)
    ca_revoked = _issuing_ca_revocation(cert, candidates) if held_or_good else None
    if isinstance(st, Revoked):
        # Its CA's own responder answers revoked (cACompromise, or the CA's own reason)
        # once the root's CRL revokes that CA (RFC 6960 §2.7): that CRL names the CA's
        # revocation; if it cannot be read, the responder's revoked stands.
        with contextlib.suppress(CLIError):
            ca_revoked = _issuing_ca_revocation(cert, candidates)
    if ca_revoked is not None:
        when, why = ca_revoked
        doc.update(status="revoked", since=_utc(when), reason=why, issuing_ca_revoked=True)
        text = (
            f"{serial}: revoked: its issuing CA was revoked on the root CRL "
            f"since {doc['since']} ({why})"
        )
    elif isinstance(st, Good) and cert.not_valid_after_utc < _certificate_clock():
        # OCSP "good" means not revoked (RFC 6960 §2.2); this command answers "does my
        # certificate work", and an expired one works nowhere (it said good, exit 0)
        doc.update(status="expired", not_after=_utc(cert.not_valid_after_utc))
        text = f"{serial}: expired at {doc['not_after']} (not revoked)"
    elif isinstance(st, Good):
        doc["status"] = "good"
        text = f"{serial}: good"
    elif isinstance(st, OnHold):
        # times as the CA's own answers write them (eport suspend, eport revoke)
        doc.update(status="on-hold", since=_utc(st.since))
        text = f"{serial}: on hold since {doc['since']} (certificateHold)"
    elif isinstance(st, Revoked):
        reason = st.reason.rfc_name if st.reason is not None else "unspecified"
        doc.update(status="revoked", since=_utc(st.revoked_at), reason=reason)
        text = f"{serial}: revoked since {doc['since']} ({reason})"
    else:
        doc["status"] = "unknown"
        text = f"{serial}: unknown to the responder"
    emit(as_json, doc, text)
    code = {
        "good": StatusExit.GOOD,
        "revoked": StatusExit.REVOKED,
        "on-hold": StatusExit.ON_HOLD,
        "unknown": StatusExit.UNKNOWN,
        "expired": StatusExit.EXPIRED,
    }[doc["status"]]
    if code is not StatusExit.GOOD:
        sys.exit(code)  # main() passes SystemExit on; what is printed stands


def _certificate_clock() -> datetime.datetime:
    """The time ``eport status`` judges a certificate's own validity at (now)."""
    return datetime.datetime.now(datetime.UTC)


def _issuing_ca_revocation(
    cert: x509.Certificate, candidates: list[x509.Certificate]
) -> tuple[datetime.datetime, str] | None:
    """When and why the root's CRL revokes the CA that issued ``cert``; None if it does
    not. The issuing CA is the candidate that signed ``cert``, the root the candidate (or,
    failing one, its caIssuers) that signed the issuing CA; the CRL comes from the issuing
    CA's distribution point and must verify under the root and be current. Any doubt is
    an error (CLIError), never a pass."""
    import requests

    from ca.ocsp_client import issuer_among

    issuer = issuer_among(cert, candidates)
    if issuer is None or issuer.subject == issuer.issuer:
        return None  # issued by the root itself: nothing above it to revoke
    root = issuer_among(issuer, candidates) or issuer_among(issuer, [_fetch_ca_issuer(issuer)])
    if root is None:
        raise CLIError("cannot tell whether the issuing CA is revoked: its root is not known")
    try:
        points = issuer.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        url = next(
            str(n.value)
            for dp in points
            for n in dp.full_name or []
            if isinstance(n, x509.UniformResourceIdentifier)
        )
    except (x509.ExtensionNotFound, StopIteration):
        raise CLIError("the issuing CA's certificate names no CRL of the root") from None
    crl = None
    # The CRL is trusted for its signature, not its location: where the certificate's own
    # responder answers (its AIA) serves the same path, for a CA whose ceremony wrote
    # another base URL into the issuing CA's certificate.
    for where in dict.fromkeys([url, *_same_path_at_responder(cert, url)]):
        try:
            r = fetch("GET", where, timeout=15)
            r.raise_for_status()
            crl = x509.load_der_x509_crl(r.content)
            break
        except (requests.RequestException, ValueError) as exc:
            failure = f"cannot fetch the root's CRL from {where}: {type(exc).__name__}"
    if crl is None:
        raise CLIError(failure)
    now = datetime.datetime.now(datetime.UTC)
    if crl.issuer != root.subject or not crl.is_signature_valid(root.public_key()):  # type: ignore[arg-type]
        raise CLIError(f"the CRL at {url} is not signed by the root")
    if crl.next_update_utc is not None and crl.next_update_utc < now:
        raise CLIError(f"the root's CRL at {url} is out of date (next update was due)")
    entry = crl.get_revoked_certificate_by_serial_number(issuer.serial_number)
    if entry is None:
        return None
    try:
        reason = str(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value)
    except x509.ExtensionNotFound:
        reason = "unspecified"
    return entry.revocation_date_utc, reason  # ReasonFlags' values are RFC 5280's names


def _same_path_at_responder(cert: x509.Certificate, url: str) -> list[str]:
    """``url``'s path at the origin of ``cert``'s OCSP responder (its AIA), if it has one."""
    from urllib.parse import urlsplit

    from cryptography.x509.oid import AuthorityInformationAccessOID

    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    out = []
    for d in aia:
        if d.access_method == AuthorityInformationAccessOID.OCSP:
            ocsp = urlsplit(str(d.access_location.value))
            out.append(urlsplit(url)._replace(scheme=ocsp.scheme, netloc=ocsp.netloc).geturl())
    return out


def _fetch_ca_issuer(cert: x509.Certificate) -> x509.Certificate:
    import requests
    from cryptography.x509.oid import AuthorityInformationAccessOID

    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        url = next(
            str(d.access_location.value)
            for d in aia
            if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        )
    except (x509.ExtensionNotFound, StopIteration):
        raise CLIError(
            "no issuer certificate: give --issuer or keep chain.pem beside --cert"
        ) from None
    try:
        r = fetch("GET", url, timeout=15)
        r.raise_for_status()
        return x509.load_der_x509_certificate(r.content)
    except (requests.RequestException, ValueError) as exc:
        raise CLIError(f"cannot fetch the issuer certificate from {url}: {exc}") from None


# -- single sign-on ---------------------------------------------------------------------------


@cli.command()
@identity_options("certificate holder")
@json_option
@pass_ctx
def login(
    ctx: Ctx, cert_file: Path, key_file: Path, passphrase_file: Path | None, as_json: bool
) -> None:
    """Log in once with your certificate: opens a single sign-on session.

    Signs an RFC 7523 JWT assertion with the certificate's key (the chain in x5c);
    the token service checks the chain, the certificate's status and replay, and
    returns a session kept with mode 0600 in ~/.config/eport/ ($XDG_CONFIG_HOME/eport/
    when that is set; EPORT_CONFIG_DIR names another directory). Afterwards
    `eport token --service ID` works for every service without the key, until
    `eport logout`, 8 hours (at most until the certificate expires), or the
    certificate's revocation. One session is kept per server (--server /
    EPORT_SERVER): a new login there ends the session kept before it.

    \b
      eport login --cert ./xiamen-harbour/cert.pem --key ./xiamen-harbour/key.pem
    """
    from authsvc.principal import x5t_s256
    from cli import session

    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    session.check_writable(ctx.server)
    endpoint = ctx.server.rstrip("/") + "/auth/token"
    jwt_assertion = session.assertion(ident, endpoint, x5t_s256(ident.chain[0]))
    doc = session.post_form(
        ctx.server,
        "/auth/token",
        {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt_assertion},
    )
    previous = session.saved(ctx.server)
    path = session.save(
        ctx.server,
        {"server": ctx.server, "refresh_token": doc["refresh_token"], "session": doc["session"]},
    )
    info = doc["session"]
    text = (
        f"Logged in as {info['name']} ({info['subject']}), session until {info['expires_at']}.\n"
        f"Session saved in {path}"
    )
    result: dict[str, Any] = {"session": info, "file": str(path)}
    if previous is not None:
        # The file held another session: it ends now, not 8 hours later with its tokens
        # still validating (the file was written over and nothing could end it).
        with contextlib.suppress(CLIError):
            ended = session.post_form(
                ctx.server, "/auth/logout", {"refresh_token": previous["refresh_token"]}
            )
            if ended.get("ended"):
                sid = (previous.get("session") or {}).get("sid", "")
                result["ended_previous_session"] = sid
                text += f"\nThe previous session of this file ({sid}) is ended."
    emit(as_json, result, text)


@cli.command()
@click.option(
    "--service",
    required=True,
    callback=not_blank,
    help="The e-port service id (see policies/services.toml), e.g. customs-declaration.",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    callback=lambda ctx, param, values: tuple(not_blank(ctx, param, v) or v for v in values),
    help="Only this scope of the service (repeat for several; default: every scope you "
    "have there): a token with less than you may do, to test a service's least privilege.",
)
@json_option
@pass_ctx
def token(ctx: Ctx, service: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Print an access token for the --service from your session (no key needed).

    The token is an RFC 9068 JWT for that service's audience, bound to your login
    certificate (cnf.x5t#S256), valid 10 minutes. Use it as `Authorization: Bearer`.
    Needs a session: `eport login` first.

    \b
      curl -H "Authorization: Bearer $(eport token --service customs-declaration)" ...
      eport token --service customs-declaration --scope declaration:read --json
    """
    from cli import session

    data = session.load(ctx.server)
    session.check_writable(ctx.server)  # the refresh token rotates: its successor is kept
    form = {
        "grant_type": "refresh_token",
        "refresh_token": data["refresh_token"],
        "audience": service,
    }
    if scopes:  # RFC 6749 §6: fewer scopes than the grant's, space-separated
        form["scope"] = " ".join(dict.fromkeys(" ".join(scopes).split()))
    doc = session.post_form(ctx.server, "/auth/token", form)
    data["refresh_token"] = doc.pop("refresh_token")
    session.save(ctx.server, data)
    emit(as_json, doc, doc["access_token"])


@cli.command()
@json_option
@pass_ctx
def whoami(ctx: Ctx, as_json: bool) -> None:
    """Show the current single sign-on session (of `eport login`, for this server).

    \b
      eport whoami
      eport whoami --json
    """
    from cli import session

    data = session.load(ctx.server)
    info = session.post_form(ctx.server, "/auth/session", {"refresh_token": data["refresh_token"]})
    lines = [
        f"Subject:      {info['subject']} ({info['subject_class']})",
        f"Name:         {info['name']}",
        f"Certificate:  {info['certificate_serial']}",
        f"Session:      {info['sid']} until {info['expires_at']}",
    ]
    if info.get("uscc"):
        lines.insert(2, f"USCC:         {info['uscc']}")
    emit(as_json, info, "\n".join(lines))


@cli.command()
@json_option
@pass_ctx
def logout(ctx: Ctx, as_json: bool) -> None:
    """End the session everywhere: every token from it stops validating at once.

    \b
      eport logout
    """
    from cli import session

    if not session.session_file(ctx.server).exists():
        # Nothing kept for this server (logged out already, or never in): nothing to end,
        # which is what was asked; a second logout exited 1 as a failure (CLI probe 23)
        emit(
            as_json,
            {"ended": False, "logged_in": False},
            f"Not logged in to {ctx.server}: there is no session here to end.",
        )
        return
    data = session.load(ctx.server)
    doc = session.post_form(ctx.server, "/auth/logout", {"refresh_token": data["refresh_token"]})
    session.forget(ctx.server)
    emit(
        as_json,
        doc,
        "Logged out; the session is ended everywhere."
        if doc.get("ended")
        else "The session had already ended.",
    )


@cli.group("auth")
def auth_group() -> None:
    """Administration of the token service (run on its host)."""


@auth_group.command("fetch-ca")
@data_dir_option("The token service's data directory (env EPORT_DATA_DIR).")
@click.option(
    "--root-sha256",
    metavar="HEX",
    default=None,
    help="The root certificate's SHA-256 (eport ca init's 'Root: ... SHA-256' line, or "
    "openssl x509 -in CA_DATA_DIR/ca/root.crt -noout -fingerprint -sha256); needed the "
    "first time.",
)
@json_option
@pass_ctx
def auth_fetch_ca(ctx: Ctx, data_dir: Path, root_sha256: str | None, as_json: bool) -> None:
    """Fetch the CA's public files for a token service run apart (eport serve --only auth).

    Reads the root, every issuing CA generation and the root CRL from the CA at
    --server (EPORT_SERVER), checks them (the root has the SHA-256 given, or is the
    one DATA_DIR already has; every issuing CA and the root CRL are signed by it) and
    writes them into DATA_DIR/ca/, each whole, then ca/generation, so that a running
    token service reloads them once. Run it once before the first start, and again
    after each CA ceremony (a cron job may run it: it changes nothing when nothing
    changed). A refusal writes nothing.

    \b
      export EPORT_SERVER=http://ca.internal:8000
      eport auth fetch-ca --data-dir /srv/eport-auth --root-sha256 3f1c...e9   (the first time)
      eport auth fetch-ca --data-dir /srv/eport-auth                           (after a ceremony)
    """
    from cli.fetchca import fetch_ca, root_digest

    digest = root_digest(root_sha256) if root_sha256 is not None else None
    result = fetch_ca(ctx.server, data_dir, digest)
    changed = result["changed"]
    text = (
        f"Fetched the CA's public files from {result['server']} into {result['ca_dir']}/ "
        f"(root SHA-256 {result['root_sha256']}; issuing CAs: "
        f"{', '.join(result['generations'])}): "
        + (f"wrote {', '.join(changed)}, then generation" if changed else "nothing changed")
    )
    emit(as_json, result, text)


@auth_group.command("rotate-keys")
@data_dir_option("The server's data directory (env EPORT_DATA_DIR).")
@click.option(
    "--dev", is_flag=True, help="Read the key passphrase from the development data directory."
)
@click.option(
    "--force",
    is_flag=True,
    help="Rotate even if a next key was published less than 5 minutes ago.",
)
@click.option(
    "--compromised",
    is_flag=True,
    help="The keys are compromised (or suspected): withdraw them at once instead of "
    "keeping the old one published until its tokens expire; implies --force.",
)
@click.option(
    "--alg",
    "algs",
    multiple=True,
    type=click.Choice(["ES256", "RS256"]),
    help="Rotate only this key family (repeatable) [default: both].",
)
@json_option
def auth_rotate_keys(
    data_dir: Path,
    dev: bool,
    force: bool,
    compromised: bool,
    algs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Rotate the token-signing keys without a validation gap.

    Both key families rotate unless --alg names one: ES256 (access tokens, and ID
    tokens of clients registered for ES256) and RS256 (ID tokens of clients
    registered for RS256). In each, the published `next` key starts signing; the
    old key stays in the JWKS until every token it signed has expired; a new `next`
    key is published. Every server process follows within seconds. Also runs on a
    schedule (30 days by default).
    Needs EPORT_AUTH_KEY_PASSPHRASE (the server's), or --dev for `eport serve --dev`.
    A `next` key published less than 5 minutes ago (by the last rotation, or by a
    server start) is refused, as caches may not hold it yet: wait, or add --force.

    A compromised key is not kept: --compromised withdraws every key of the family at
    once (active, next and retired: they are stored together) and signs with a key
    made now. Within 5 s no server accepts a token they signed (every session stays
    open: users get new tokens by refreshing); offline verifiers drop them at their
    next JWKS fetch (its max-age is 300 s).

    \b
      eport auth rotate-keys --data-dir var --dev
      eport auth rotate-keys --data-dir var --dev --alg ES256   (access tokens' key only)
      eport auth rotate-keys --data-dir var --dev --compromised
    """
    import datetime as dt

    from sqlalchemy.orm import sessionmaker

    from authsvc.app import key_passphrase, upgrade
    from authsvc.config import AuthConfig
    from authsvc.keys import KeyRing, check_passphrase
    from authsvc.store import SqlAuthStore
    from ca.db import make_engine
    from ca.devinit import PASSPHRASE_FILE, dev_dir

    cfg = AuthConfig.load({"data_dir": data_dir, "dev": dev})
    # Said before an SQLite database is opened where no server keeps its data (a token
    # service on PostgreSQL needs no data directory here)
    if cfg.sqlalchemy_url.startswith("sqlite") and not data_dir.is_dir():
        raise CLIError(
            f"no data directory {data_dir}: give the one eport serve uses "
            "(--data-dir or EPORT_DATA_DIR)"
        )
    passphrases = dev_dir(data_dir) / PASSPHRASE_FILE
    if dev and not cfg.key_passphrase and not passphrases.is_file():
        raise CLIError(
            f"--dev reads the key passphrase from {passphrases}, which is missing: is "
            f"{data_dir} a data directory of eport serve --dev? (else set "
            "EPORT_AUTH_KEY_PASSPHRASE)"
        )
    upgrade(cfg.sqlalchemy_url)
    engine = make_engine(cfg.sqlalchemy_url)
    try:
        store = SqlAuthStore(sessionmaker(engine, expire_on_commit=False))
        # a passphrase that does not open the stored keys would make keys no other host
        # opens, and a rotation would make them sign: refused, in one line
        # (--compromised withdraws the next keys unopened: the active ones tell)
        check_passphrase(
            store, key_passphrase(cfg), ("active",) if compromised else ("active", "next")
        )
        ring = KeyRing(
            store,
            key_passphrase(cfg),
            lambda: dt.datetime.now(dt.UTC),
            max_token_lifetime=dt.timedelta(seconds=cfg.access_token_seconds),
        )
        ring.ensure()
        from authsvc.keys import ALGS, JWKS_MAX_AGE, KeyRotationTooSoon

        chosen = tuple(a for a in ALGS if a in algs) or ALGS
        try:
            promoted = ring.rotate(force=force or compromised, algs=chosen, compromised=compromised)
        except KeyRotationTooSoon as exc:
            # Name --alg only for a family that would rotate now: when every next key
            # is new, it would be refused the same way.
            now = dt.datetime.now(dt.UTC)
            young = {
                k.alg
                for k in store.list_keys()
                if k.state == "next" and now - k.created_at < JWKS_MAX_AGE
            }
            ready = [a for a in chosen if a not in young]
            way = "use --force"
            if len(chosen) > 1 and ready:
                way += f", or --alg {ready[0]} to rotate that family alone"
            raise CLIError(exc.detail.replace("force it", way)) from None
        keys = [{"kid": k.kid, "state": k.state, "alg": k.alg} for k in store.list_keys()]
    finally:
        engine.dispose()
    # "active" stays the access tokens' (ES256) key, rotated or not; "active_by_alg"
    # names the active key of each family.
    active = {k["alg"]: k["kid"] for k in keys if k["state"] == "active"}
    emit(
        as_json,
        {
            "active": active["ES256"],
            "active_by_alg": active,
            "rotated": sorted(promoted),
            "withdrawn": compromised,
            "keys": keys,
        },
        "Signing with "
        + " and ".join(f"{kid} ({alg})" for alg, kid in promoted.items())
        + " now"
        + (
            "; the old keys are withdrawn: no server accepts their tokens within 5 s.\n"
            if compromised
            else ".\n"
        )
        + "\n".join(f"  {k['state']:<8} {k['alg']:<6} {k['kid']}" for k in keys),
    )


@cli.group("roles")
def roles_group() -> None:
    """An enterprise grants roles to its operators (signed with its certificate)."""


operator_id_option = click.option(
    "--operator",
    "operator_id",
    required=True,
    callback=not_blank,
    help="The operator id (the serialNumber in the operator's certificate).",
)
"""The operator a role command is about."""


@roles_group.command("grant")
@operator_id_option
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    help="A role from policies/access.toml; repeat for several. Replaces earlier grants.",
)
@click.option(
    "--ca-server",
    envvar="EPORT_CA_SERVER",
    default=None,
    metavar="URL",
    help="The CA's base URL, asked for the operator's current authorization, when the "
    "token service is served apart from it (env EPORT_CA_SERVER; default: --server).",
)
@identity_options("enterprise (legal person)")
@json_option
@pass_ctx
def roles_grant(
    ctx: Ctx,
    operator_id: str,
    roles: tuple[str, ...],
    ca_server: str | None,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Grant ROLEs to an operator; their next access tokens carry the matching scopes.

    \b
      eport roles grant --operator E1024 --role declaration --cert ent/cert.pem --key ent/key.pem
        (repeat --role for several roles; the operator then has exactly those given)
    """
    from urllib.parse import quote

    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    client = ctx.client()
    # The grant is for the operator's current authorization, as the CA has it: never for
    # the next person the enterprise gives the id (the token service reads no CA tables)
    ca = CAClient(ca_server.rstrip("/")) if ca_server else client
    try:
        current = ca.call(
            "GET", f"/ca/v1/operators/authorization?operator_id={quote(operator_id, safe='')}",
            None, ident,
        )  # fmt: skip
    except ForeignAnswer as exc:
        if ca_server or exc.status != 404:
            raise
        raise CLIError(
            f"{exc}; a token service served apart from the CA: give the CA's URL too "
            "(--ca-server URL or EPORT_CA_SERVER), which names the operator's authorization"
        ) from None
    body = {
        # as the CA spells it, which the certificate carries: the CA finds the id whatever
        # its case, the token service keys the grant as written (two-host probe, s27)
        "operator_id": current.get("operator_id") or operator_id,
        "roles": list(roles),
        "authorization": current["authorization"],
    }
    doc = client.call("POST", "/auth/v1/roles", body, ident)
    emit(
        as_json,
        doc,
        f"Operator {doc['operator_id']} of {doc['uscc']} now has: {', '.join(doc['roles'])}\n"
        f"  for its authorization {current['application']} of {current['authorized_at']}; "
        "another person given the id later has none",
    )


@roles_group.command("clear")
@operator_id_option
@identity_options("enterprise (legal person)")
@json_option
@pass_ctx
def roles_clear(
    ctx: Ctx,
    operator_id: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Take every role from an operator (one who left, or changed duties); its next
    access tokens carry no role's scopes. Roles are granted to the operator's
    authorization (its certificates' dnQualifier): a renewal keeps them, while the
    next person given the id has none until granted them (eport roles grant).

    \b
      eport roles clear --operator E1024 --cert ent/cert.pem --key ent/key.pem
    """
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    doc = ctx.client().call(
        "POST", "/auth/v1/roles", {"operator_id": operator_id, "roles": []}, ident
    )
    emit(as_json, doc, f"Operator {operator_id} of {doc['uscc']} now has no roles")


# -- key files ---------------------------------------------------------------------------------


@cli.group()
def key() -> None:
    """Look after a private key file this machine holds."""


@key.command("passwd")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The key's current passphrase (else EPORT_PASSPHRASE, else a prompt).",
)
@click.option(
    "--new-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The new passphrase, 8 characters or more (else a prompt, typed twice). The "
    "current one again keeps it.",
)
@json_option
def key_passwd(
    file: Path, passphrase_file: Path | None, new_passphrase_file: Path | None, as_json: bool
) -> None:
    """Encrypt the key in FILE again, under a new passphrase or the same one.

    The key stays what it is (its certificates stay valid); only its encryption changes,
    and it takes the current strength: PBKDF2-HMAC-SHA256 at 600,000 iterations
    (EPORT_KEY_KDF_ITERATIONS). Key files written before that used 2,048. The file is
    replaced whole, mode 0600; a bundle.p12 beside it keeps its old passphrase.

    \b
      eport key passwd ./xiamen-harbour/key.pem
      eport key passwd key.pem --passphrase-file old.txt --new-passphrase-file new.txt
    """
    data = b""
    with contextlib.suppress(OSError):
        data = file.read_bytes()
    if data.startswith(keyfiles.PKCS11_SCHEME.encode()):
        raise CLIError(
            f"{file} names a key in a PKCS#11 token, which has no passphrase here: its PIN "
            "is the token's, changed with the token's own tools"
        )
    private, _ = keyfiles.key_and_passphrase(file, passphrase_file)
    before = pkcs8.count_of(data)
    new = keyfiles.passphrase(new_passphrase_file, new=True, what="key (new)", env=None)
    pem = pkcs8.encrypt(private, new)
    try:
        write_private(file, pem)  # the old file stays if this fails
    except OSError as exc:
        raise CLIError(f"cannot write {file}: {exc.strerror or exc}; it is unchanged") from None
    after = pkcs8.count_of(pem)
    doc: dict[str, Any] = {"key": str(file), "iterations": after, "previous_iterations": before}
    was = "in the clear" if b"ENCRYPTED" not in data else f"{before:,}" if before else "another way"
    lines = [f"Encrypted {file} again: PBKDF2-HMAC-SHA256, {after:,} iterations (was {was})."]
    p12 = file.parent / "bundle.p12"
    if p12.exists():
        doc["bundle_p12"] = str(p12)
        lines.append(f"{p12} beside it still opens with the old passphrase.")
    emit(as_json, doc, "\n".join(lines))


# -- certificates -----------------------------------------------------------------------------


@cli.group()
def cert() -> None:
    """Look at certificates: a local file, or what the CA issued to an enterprise."""


def describe(c: x509.Certificate) -> dict[str, Any]:
    def ext(cls: Any) -> Any:
        try:
            return c.extensions.get_extension_for_class(cls).value
        except x509.ExtensionNotFound:
            return None

    ku = ext(x509.KeyUsage)
    eku = ext(x509.ExtendedKeyUsage)
    pol = ext(x509.CertificatePolicies)
    bc = ext(x509.BasicConstraints)
    usages = []
    if ku is not None:
        for attr in (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
        ):
            if getattr(ku, attr):
                usages.append(attr)
    pub = c.public_key()
    try:
        from ca.keys import KeyType

        key_type = KeyType.of(pub).value
    except EPortError:
        key_type = type(pub).__name__
    return {
        "subject": dn_string(c.subject),
        "issuer": dn_string(c.issuer),
        "serial": format(c.serial_number, "x"),
        "not_before": _utc(c.not_valid_before_utc),
        "not_after": _utc(c.not_valid_after_utc),
        "key_type": key_type,
        "ca": bool(bc and bc.ca),
        "key_usage": usages,
        "extended_key_usage": [
            o._name if hasattr(o, "_name") else o.dotted_string for o in (eku or [])
        ],
        "policies": [p.policy_identifier.dotted_string for p in (pol or [])],
        "sha256": c.fingerprint(hashes.SHA256()).hex(),
    }


@cert.command("show")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@json_option
def cert_show(file: Path, as_json: bool) -> None:
    """Print the certificate(s) in FILE (PEM or DER) readably.

    \b
      eport cert show ./ent/cert.pem
      eport cert show ./ent/chain.pem          (the issuing CA, then the root)
    """
    certs = keyfiles.load_certs(file)
    infos = [describe(c) for c in certs]
    blocks = []
    now = datetime.datetime.now(datetime.UTC)
    for c, i in zip(certs, infos, strict=True):
        # UTC with Z, as every other time the CLI prints, whatever TZ says
        valid = f"{_utc(c.not_valid_before_utc)} → {_utc(c.not_valid_after_utc)}"
        if now > c.not_valid_after_utc:
            valid += "  (expired)"
        elif now < c.not_valid_before_utc:
            valid += "  (not yet valid)"
        blocks.append(
            "\n".join(
                [
                    f"Subject:     {i['subject']}",
                    f"Issuer:      {i['issuer']}",
                    f"Serial:      {i['serial']}",
                    f"Valid:       {valid}",
                    f"Key:         {i['key_type']}{'  (CA)' if i['ca'] else ''}",
                    f"Key usage:   {', '.join(i['key_usage']) or '-'}",
                    f"Ext. usage:  {', '.join(i['extended_key_usage']) or '-'}",
                    f"Policies:    {', '.join(i['policies']) or '-'}",
                    f"SHA-256:     {i['sha256']}",
                ]
            )
        )
    emit(as_json, {"certificates": infos}, "\n\n".join(blocks))


@cert.command("list")
@click.option("--uscc", required=True, help="The enterprise whose certificates to list.")
@identity_options("enterprise, operator or RA officer")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="At most this many certificates (one page).",
)
@after_option("certificates")
@json_option
@pass_ctx
def cert_list(
    ctx: Ctx,
    uscc: str,
    cert_file: Path,
    key_file: Path,
    passphrase_file: Path | None,
    limit: int,
    after: str,
    as_json: bool,
) -> None:
    """List what the CA issued to an enterprise (its own, or any for an RA officer),
    oldest first, one page at a time: when more follow the page, the --after CURSOR
    that lists them is said on standard error (next with --json).

    \b
      eport cert list --uscc 91350100M000100Y43 --cert ent/cert.pem --key ent/key.pem
    """
    code = str(USCC.parse(uscc))
    ident = keyfiles.load_identity(cert_file, key_file, passphrase_file)
    query: dict[str, str | int] = {"uscc": code, "limit": limit}
    if after:
        query["after"] = after
    doc = ctx.client().call("GET", "/ca/v1/certificates?" + urlencode(query), identity=ident)
    check_page(doc, after)
    rows = [f"{'SERIAL':<34} {'PROFILE':<11} {'STATUS':<8} {'NOT AFTER':<21} SUBJECT"]
    for c in doc["certificates"]:
        status = c.get("status", "-")  # a server of an earlier release says none
        rows.append(
            f"{c['serial']:<34} {c['profile']:<11} {status:<8} {c['not_after']:<21} {c['subject']}"
        )
    if not doc["certificates"]:
        rows = [f"No certificates issued to {code}" + (" after that page." if after else ".")]
    emit(as_json, doc, "\n".join(rows))
    more_hint(as_json, doc, "certificates")


GLOBAL_OPTIONS = ("--server", "--verbose", "-v")


def main() -> None:
    """Entry point: one clear line and a non-zero exit on error."""
    verbose = "--verbose" in sys.argv or "-v" in sys.argv[1:2]
    accept_names_up_to_64_characters()
    print_any_text()
    # https://no-color.org: any non-empty NO_COLOR turns colour off, even at a terminal
    color = False if os.environ.get("NO_COLOR") else None
    try:
        cli.main(standalone_mode=False, prog_name="eport", color=color)
    except click.exceptions.Abort as exc:
        click.echo("Aborted.", err=True)
        # Ctrl-C: 130 (128 + SIGINT), as a shell reports a command SIGINT stopped, so a
        # script tells it from a failure; click turns the KeyboardInterrupt into Abort
        interrupted = isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt)
        sys.exit(130 if interrupted else 1)
    except click.exceptions.NoArgsIsHelpError as exc:
        # `eport` or `eport ca` alone: the group's help, as it is (not a page of help
        # behind "eport: error:"); exit 2, as for a command line that runs nothing
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "eport"
        if isinstance(exc, click.NoSuchOption) and exc.option_name in GLOBAL_OPTIONS:
            # eport's own options go before the command: the usual slip of a script
            value = " URL" if exc.option_name == "--server" else ""
            command = where.removeprefix("eport").strip()
            hint = f"(an option of eport itself: eport {exc.option_name}{value} {command} ...)"
            click.echo(f"eport: error: {exc.format_message()} {hint}", err=True)
            sys.exit(exc.exit_code)
        if (
            isinstance(exc, click.NoSuchOption)
            and exc.option_name == "--json"
            and exc.ctx is not None
            and any("--format" in getattr(p, "opts", ()) for p in exc.ctx.command.params)
        ):
            # an export (eport audit log) takes --format json: the one command without --json
            click.echo(
                f"eport: error: No such option: --json ({where} exports with --format json)",
                err=True,
            )
            sys.exit(exc.exit_code)
        click.echo(
            f"eport: error: {shortened(one_line(exc.format_message()))} (see '{where} --help')",
            err=True,
        )
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"eport: error: {shortened(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except (CLIError, EPortError) as exc:
        if verbose:
            traceback.print_exc()
        msg = exc.detail if isinstance(exc, EPortError) else str(exc)
        click.echo(f"eport: error: {shortened(msg)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except UnicodeEncodeError as exc:
        if exc.reason != "surrogates not allowed":
            raise_unexpected(exc, verbose)
        # bytes of an argument or setting that the locale's encoding did not decode
        # (Python hands them on as surrogates), found only when they were to be sent:
        # UTF-8 under a GBK or C locale, or bytes that are not UTF-8; the value itself
        # may be a secret, so only its first such byte is named
        from cli.options import not_utf8_text

        if verbose:
            traceback.print_exc()
        click.echo(f"eport: error: {not_utf8_text(exc)}", err=True)
        sys.exit(2)
    except UnicodeDecodeError as exc:
        # its repr holds every byte it was decoding (a passphrase typed or read, a file):
        # only its reason, which names one byte, is said
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (rerun with --verbose)"
        click.echo(f"eport: unexpected error: UnicodeDecodeError: {exc}{hint}", err=True)
        sys.exit(1)
    except Exception as exc:
        raise_unexpected(exc, verbose)


def one_line(message: str) -> str:
    """``message`` on one line: click lists the choices of a missing option one per line
    ("Choose from:\\n\\tkeyCompromise,\\n\\t..."), which would split the error."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


# A value quoted as repr quotes it ('…' not within a word, as an apostrophe is: "log's"),
# over 100 characters: a name the CA takes has at most 64, and is repeated in full
_LONG_QUOTE = re.compile(r"(?<!\w)'[^'\n]{100,}'(?!\w)")
_LONG_WORD = re.compile(r"(\S{1000,}?)(:?)(?=\s|$)")


def shortened(message: str) -> str:
    """``message`` with every quoted value over 100 characters, and every unquoted word
    over a thousand (a path), cut to :data:`~cli.options.QUOTED` with "…": an error line
    repeated a 100,000-character argument in full (``a USCC has 18 characters,
    'AAAA…'``), whichever part of the program made the message."""
    message = _LONG_QUOTE.sub(lambda m: clip(m.group(0)[1:-1]), message)
    return _LONG_WORD.sub(lambda m: m.group(1)[: QUOTED - 1] + "…" + m.group(2), message)


def raise_unexpected(exc: Exception, verbose: bool) -> NoReturn:
    """The one line (and exit 1) of a failure no command foresaw."""
    if verbose:
        traceback.print_exc()
    database = _database_trouble(exc)
    storage = _storage_trouble(exc)
    if database is not None:
        click.echo(f"eport: error: {database}", err=True)
    elif storage is not None:
        click.echo(f"eport: error: {storage}", err=True)
    else:
        hint = "" if verbose else " (rerun with --verbose)"
        click.echo(f"eport: unexpected error: {exc!r}{hint}", err=True)
    sys.exit(1)


_STORAGE_ERRNOS = {
    errno.EROFS: "is on a read-only file system",
    errno.ENOSPC: "is on a full disk",
    errno.EDQUOT: "is over its disk quota",
    errno.EACCES: "may not be written (permission denied)",
}


def _storage_trouble(exc: Exception) -> str | None:
    """One line for a file this command could not write because of its storage (read-only,
    full, no permission): it said ``unexpected error: OSError(30, 'Read-only file
    system')`` (custody probe, F3)."""
    if not isinstance(exc, OSError) or exc.errno not in _STORAGE_ERRNOS:
        return None
    where = f"{exc.filename}" if exc.filename else "a file it writes"
    return (
        f"{where} {_STORAGE_ERRNOS[exc.errno]}: the command stopped there; free or fix the "
        "storage and run it again"
    )


def _database_trouble(exc: Exception) -> str | None:
    """One line for a database the settings name but that cannot be used (unreachable,
    refused, missing, an unknown URL scheme), naming the settings to check; None for any
    other failure. The driver's first line says why; it never holds the password."""
    import sqlite3

    from sqlalchemy import exc as sa

    settings = "EPORT_DATABASE_URL / EPORT_AUTH_DATABASE_URL"
    if isinstance(exc, sa.NoSuchModuleError | sa.ArgumentError):
        return (
            f"a database URL ({settings}) is not one this eport can use: write "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE, or leave it unset for SQLite"
        )
    orig = getattr(exc, "orig", exc)
    why = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    if isinstance(orig, sqlite3.Error) and not any(
        os.environ.get(name) or os.environ.get(name + "_FILE")
        for name in ("EPORT_DATABASE_URL", "EPORT_AUTH_DATABASE_URL")
    ):
        settings = "the SQLite files of the data directory, eport.db and auth.db"
    if getattr(orig, "pgcode", None) == "42501":  # insufficient_privilege
        return (
            f"cannot use the database ({settings}): {why}: its role must be allowed to "
            "create tables in the schema (the server brings it to the current revision)"
        )
    if isinstance(exc, sa.OperationalError | sa.InterfaceError | sqlite3.OperationalError):
        return f"cannot use the database ({settings}): {why}"
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(orig, sqlite3.DatabaseError) and code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        # a file damaged (its -wal deleted under a server, a disk fault): no retry mends it
        return (
            f"the database is damaged ({settings}): {why}; keep the data directory as it "
            "is and restore the database from a backup (eport restore; docs/backup.md)"
        )
    return None


SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
"""SQLite's result codes for "database disk image is malformed" and "file is not a
database" (sqlite3.h)."""

_ = (datetime, serialization, Identity)
