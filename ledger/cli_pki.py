"""`pacsmesh consortium init-ca` and `sign-csr`: the consortium CA's two operator commands.

The CA passphrase comes from --passphrase-file, else PACSMESH_CA_PASSPHRASE, else a hidden
prompt on a terminal; it is never echoed, logged or put in an error message.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ledger.errors import LedgerError

CA_PASSPHRASE_ENV = "PACSMESH_CA_PASSPHRASE"
EXIT_ERROR = 2

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file", help=f"File holding the CA passphrase (or ${CA_PASSPHRASE_ENV})."
    ),
]


def read_passphrase(path: Path | None, confirm: bool = False) -> bytes:
    """The CA passphrase from a file, the environment, or a hidden prompt."""
    from ledger.pki import PkiError

    if path is not None:
        try:
            return path.read_text().rstrip("\n").encode()
        except OSError:
            raise PkiError(f"cannot read passphrase file {path}") from None
    env = os.environ.get(CA_PASSPHRASE_ENV)
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        raise PkiError(f"no CA passphrase: use --passphrase-file or set {CA_PASSPHRASE_ENV}")
    value: str = typer.prompt("CA passphrase", hide_input=True, confirmation_prompt=confirm)
    return value.encode()


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def init_ca(
    out: Annotated[Path, typer.Option("--out", help="Directory for ca.crt and ca.key.")],
    passphrase_file: PassphraseFile = None,
    name: Annotated[str, typer.Option(help="CA common name.")] = "pacsmesh consortium CA",
    days: Annotated[int, typer.Option(min=1, help="Validity in days.")] = 3650,
    key_type: Annotated[str, typer.Option(help="ec (P-256) or rsa (3072).")] = "ec",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Create the consortium CA (key encrypted under a passphrase, certificate in PEM)."""
    from ledger.pki import CA_CERT_FILE, create_ca, fingerprint_hex

    try:
        ca = create_ca(out, read_passphrase(passphrase_file, confirm=True), name, days, key_type)
    except LedgerError as exc:
        raise _fail(str(exc)) from None
    cert_path = out / CA_CERT_FILE
    if as_json:
        typer.echo(json.dumps({"ca_cert": str(cert_path), "fingerprint": fingerprint_hex(ca.cert)}))
    else:
        typer.echo(f"consortium CA created: {cert_path} (sha256 {fingerprint_hex(ca.cert)})")


def sign_csr_command(
    csr: Annotated[Path, typer.Argument(help="The node's CSR (PEM).")],
    ca: Annotated[Path, typer.Option("--ca", help="The CA directory (ca.crt, ca.key).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the node certificate.")],
    passphrase_file: PassphraseFile = None,
    days: Annotated[int, typer.Option(min=1, help="Validity in days.")] = 365,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="Extra DNS name.")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="Extra IP address.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Issue a node certificate for a CSR (TLS server + client, short validity)."""
    from ledger.pki import PkiError, cert_pem, fingerprint_hex, load_ca, load_csr
    from ledger.pki import sign_csr as issue

    try:
        try:
            request = load_csr(csr.read_bytes())
        except OSError:
            raise PkiError(f"cannot read CSR {csr}") from None
        authority = load_ca(ca, read_passphrase(passphrase_file))
        cert = issue(authority, request, days, dns or [], ip or [])
        out.write_bytes(cert_pem(cert))
    except LedgerError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps({"cert": str(out), "fingerprint": fingerprint_hex(cert)}))
    else:
        typer.echo(f"node certificate written: {out} (sha256 {fingerprint_hex(cert)})")


def register_pki_commands(consortium_app: typer.Typer) -> None:
    """Add the CA commands to `pacsmesh consortium`."""
    consortium_app.command("init-ca")(init_ca)
    consortium_app.command("sign-csr")(sign_csr_command)
