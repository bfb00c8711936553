"""`pacsmesh patient sign-link`: the patient signs the link of their hospital record to their key.

Runs where the patient's key is (their device, a patient portal); needs no chain. It prints
the FHIR Parameters resource the hospital posts to `POST /fhir/Patient/{id}/$link`. The MRN
only enters the signed message as keccak256("issuer|mrn") and is never printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def sign_link(
    key: Annotated[Path, typer.Option("--key", help="The patient's encrypted key file.")],
    hospital: Annotated[str, typer.Option("--hospital", help="The hospital's consortium id.")],
    mrn: Annotated[str, typer.Option("--mrn", help="The patient's record number there.")],
    issuer: Annotated[str, typer.Option("--issuer", help="Issuer of the MRN (PID-3.4).")] = "",
    password_file: Annotated[
        Path | None, typer.Option(help="File holding the key's password.")
    ] = None,
) -> None:
    """Sign a link of this hospital record to the patient's key; print it as FHIR Parameters."""
    from ledger.cli import _read_password
    from ledger.errors import LedgerError
    from ledger.keystore import read_key_file
    from node.services.patient_links import sign_link as make_link

    try:
        patient = read_key_file(key, _read_password(password_file))
    except LedgerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    signed = make_link(patient, hospital.strip(), mrn.strip(), issuer.strip())
    typer.echo(json.dumps(signed.to_parameters(), indent=2))


def register(patient_app: typer.Typer) -> None:
    """Add `sign-link` to the `pacsmesh patient` group."""
    patient_app.command("sign-link")(sign_link)
