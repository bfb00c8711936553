"""`pacsmesh node user add|remove|list|token`: local accounts, usable while the node runs.

These commands open only the index database and the token-signing key, never the archive (whose
data-directory lock the running node holds). They must see the same settings as the node (same
`--config` / `NODE_*` environment), or tokens they print name another issuer.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from node.errors import NodeError

if TYPE_CHECKING:
    from node.settings import NodeSettings

user_app = typer.Typer(help="Local user accounts and their tokens.", no_args_is_help=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="node data directory (NODE_DATA_DIR)")
]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
DatabaseUrl = Annotated[str | None, typer.Option(help="index database URL")]
_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(data_dir: Path | None, config: Path | None, database_url: str | None) -> NodeSettings:
    from pydantic import ValidationError

    from node.settings import load_settings

    try:
        return load_settings(data_dir=data_dir, config_file=config, database_url=database_url)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"invalid settings: {problems}")
        raise  # unreachable: _fail raises


def _engine(settings: NodeSettings):  # type: ignore[no-untyped-def]
    from node.storage.db import open_index

    os.umask(0o077)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return open_index(settings.index_url)


def parse_ttl(text: str) -> int:
    """Seconds in `900`, `900s`, `15m`, `8h` or `1d`."""
    m = _TTL_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError("TTL must be a positive number with an optional unit s, m, h or d")
    return int(m.group(1)) * _UNITS[m.group(2)]


@user_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="user name (letters, digits, . _ @ -)")],
    role: Annotated[
        str,
        typer.Option(
            help="clinician, radiologist, patient, auditor, admin; or trainer (token-only)"
        ),
    ],
    patient: Annotated[
        str | None, typer.Option(help="for a patient account: their MRN at this hospital")
    ] = None,
    patient_issuer: Annotated[str, typer.Option(help="issuer of the MRN (IssuerOfPatientID)")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an account; without --password-stdin it can only get tokens from `user token`."""
    from node.auth.policy import PatientBinding
    from node.auth.users import add_user

    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            _fail("no password on standard input")
    settings = _load(data_dir, config, database_url)
    binding = PatientBinding(patient, patient_issuer) if patient else None
    engine = _engine(settings)
    try:
        account = add_user(engine, name, role, password=password, patient=binding)
    except NodeError as exc:
        _fail(exc.message)
    finally:
        engine.dispose()
    typer.echo(json.dumps({"username": account.username, "role": account.role}))


@user_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="user name")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Delete an account; the node refuses its tokens from its next request on."""
    from node.auth.users import remove_user

    engine = _engine(_load(data_dir, config, database_url))
    try:
        remove_user(engine, name)
    except NodeError as exc:
        _fail(exc.message, code=1)
    finally:
        engine.dispose()
    typer.echo(json.dumps({"removed": name}))


def _set_disabled(name: str, disabled: bool, settings: NodeSettings) -> None:
    from node.auth.users import set_disabled

    engine = _engine(settings)
    try:
        set_disabled(engine, name, disabled)
    except NodeError as exc:
        _fail(exc.message, code=1)
    finally:
        engine.dispose()
    typer.echo(json.dumps({"username": name, "disabled": disabled}))


@user_app.command("disable")
def disable(
    name: Annotated[str, typer.Argument(help="user name")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Stop an account signing in, getting tokens, or using the tokens it holds."""
    _set_disabled(name, True, _load(data_dir, config, database_url))


@user_app.command("enable")
def enable(
    name: Annotated[str, typer.Argument(help="user name")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Let a disabled account sign in again (the tokens it held stay refused)."""
    _set_disabled(name, False, _load(data_dir, config, database_url))


@user_app.command("list")
def list_(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
) -> None:
    """Every local account: name, role, whether it has a password, disabled."""
    from node.auth.users import list_users

    engine = _engine(_load(data_dir, config, database_url))
    try:
        accounts = list_users(engine)
    finally:
        engine.dispose()
    rows = [
        {
            "username": a.username,
            "role": a.role,
            "password": a.has_password,
            "disabled": a.disabled,
            "created": a.created_at.isoformat(timespec="seconds"),
        }
        for a in accounts
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        flags = ("password" if r["password"] else "token-only") + (
            ", disabled" if r["disabled"] else ""
        )
        typer.echo(f"{r['username']:<32} {r['role']:<12} {flags}")


@user_app.command("token")
def token(
    name: Annotated[str, typer.Argument(help="user name")],
    ttl: Annotated[str, typer.Option(help="lifetime: 900, 15m, 8h, 1d")] = "15m",
    scope: Annotated[
        str | None, typer.Option(help="space-separated SMART scopes (default: the role's)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="write the token to this file (mode 0600, replaced atomically)"),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Print a signed token for an account (service accounts, e.g. a training credential)."""
    from node.auth.policy import parse_scopes
    from node.auth.tokens import NodeTokens
    from node.auth.users import get_user
    from node.storage.crypto import replace_secret_file

    settings = _load(data_dir, config, database_url)
    try:
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        _fail(str(exc))
    if seconds > settings.token_max_ttl_seconds:
        _fail(f"TTL longer than token_max_ttl_seconds ({settings.token_max_ttl_seconds}s)")
    scopes = None
    if scope is not None:
        scopes = parse_scopes(scope)
        if not scopes or len(scopes) != len(scope.split()):
            _fail("--scope must list SMART scopes such as user/ImagingStudy.read")
    engine = _engine(settings)
    try:
        account = get_user(engine, name)
        if account.disabled:
            _fail("this account is disabled", code=1)
        issued = NodeTokens.from_settings(settings).issue(
            subject=account.username,
            role=account.role,
            scopes=scopes,
            patient=account.patient,
            ttl_seconds=seconds,
        )
    except NodeError as exc:
        _fail(exc.message, code=1)
    finally:
        engine.dispose()
    if out is None:
        typer.echo(issued.access_token)
        return
    # A scheduled job renews the file: a reader sees the old token or the new one.
    replace_secret_file(out, (issued.access_token + "\n").encode())
    typer.echo(json.dumps({"token_file": str(out), "expires_in": issued.expires_in}))
