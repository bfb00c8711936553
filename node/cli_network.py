"""`pacsmesh network studies|retrieve`: a clinician's cross-hospital search and retrieve.

Both talk to the clinician's own node (`--node`), which asks the other hospitals over mutual
TLS; the user needs only a bearer token for that node (`pacsmesh node user token NAME` prints
one) and, for a node whose certificate comes from the consortium CA, that CA (`--ca-cert`).
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

network_app = typer.Typer(
    help="Find and copy a patient's studies held by other hospitals (under consent).",
    no_args_is_help=True,
)

NodeUrl = Annotated[
    str, typer.Option("--node", envvar="PACSMESH_NODE_URL", help="your node's base URL")
]
TokenFile = Annotated[
    Path,
    typer.Option(
        "--token-file",
        envvar="PACSMESH_TOKEN_FILE",
        help="file holding your bearer token for that node (clinician or radiologist)",
    ),
]
CaCert = Annotated[
    Path | None,
    typer.Option(
        "--ca-cert",
        envvar="PACSMESH_CA_CERT",
        help="CA certificate to trust for the node's HTTPS (default: the system's)",
    ),
]
Patient = Annotated[
    str, typer.Option("--patient", help="a local Patient id at your node, or the patient's address")
]
PurposeOpt = Annotated[str, typer.Option("--purpose", help="treatment | research | ai-training")]
AsJson = Annotated[bool, typer.Option("--json", help="print the node's JSON answer")]
TIMEOUT = 300.0  # a retrieve copies a whole study


def _token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        typer.echo(f"error: cannot read the token file: {exc.strerror}", err=True)
        raise typer.Exit(2) from exc
    if not token:
        typer.echo("error: the token file is empty", err=True)
        raise typer.Exit(2)
    return token


def _verify(ca_cert: Path | None) -> ssl.SSLContext | bool:
    if ca_cert is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        typer.echo(f"error: cannot load the CA certificate: {exc}", err=True)
        raise typer.Exit(2) from exc


def _call(
    method: str,
    url: str,
    token_file: Path,
    ca_cert: Path | None,
    *,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {_token(token_file)}"}
    try:
        with httpx.Client(verify=_verify(ca_cert), timeout=TIMEOUT) as client:
            response = client.request(method, url, params=params, json=body, headers=headers)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the node: {type(exc).__name__}", err=True)
        raise typer.Exit(2) from exc
    try:
        value = response.json()
    except ValueError:
        value = {"error": response.text[:500]}
    return response.status_code, value


def _fail(status: int, value: Any, as_json: bool) -> typer.Exit:
    if as_json:
        typer.echo(json.dumps(value, indent=2))
    else:
        message = value.get("error") if isinstance(value, dict) else None
        typer.echo(f"error ({status}): {message or value}", err=True)
    return typer.Exit(1)


def _attr(dataset: dict[str, Any], tag: str) -> str:
    values = (dataset.get(tag) or {}).get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, dict):  # PN
        return str(first.get("Alphabetic", ""))
    return "\\".join(str(v) for v in values)


@network_app.command("studies")
def studies(
    node: NodeUrl,
    token_file: TokenFile,
    patient: Patient,
    purpose: PurposeOpt = "treatment",
    ca_cert: CaCert = None,
    as_json: AsJson = False,
) -> None:
    """The patient's studies at the other hospitals whose consent lets yours see them."""
    status, value = _call(
        "GET",
        f"{node.rstrip('/')}/network/studies",
        token_file,
        ca_cert,
        params={"patient": patient, "purpose": purpose},
    )
    if status != 200:
        raise _fail(status, value, as_json)
    if as_json:
        typer.echo(json.dumps(value, indent=2))
        return
    found = value.get("studies", [])
    typer.echo(f"{len(found)} stud{'y' if len(found) == 1 else 'ies'} for {value.get('patient')}")
    for item in found:
        study, source = item.get("study", {}), item.get("source", {})
        typer.echo(
            f"  {_attr(study, '0020000D')}  {_attr(study, '00080020')}  "
            f"{_attr(study, '00080061')}  {_attr(study, '00081030')}  "
            f"from {source.get('hospitalId')} ({source.get('account')})"
        )
    for miss in value.get("unanswered", []):
        typer.echo(
            f"  no answer from {miss.get('hospitalId')}: {miss.get('reason')} "
            f"({miss.get('detail')})"
        )


@network_app.command("retrieve")
def retrieve(
    study: Annotated[str, typer.Argument(help="Study Instance UID (from `network studies`)")],
    node: NodeUrl,
    token_file: TokenFile,
    patient: Patient,
    source: Annotated[str, typer.Option("--source", help="the owner's member account")],
    purpose: PurposeOpt = "treatment",
    break_glass: Annotated[
        int | None,
        typer.Option(
            "--break-glass",
            help="override a missing consent, recorded on chain: 1 emergency treatment, "
            "2 life-threatening, 3 patient unreachable",
        ),
    ] = None,
    ca_cert: CaCert = None,
    as_json: AsJson = False,
) -> None:
    """Copy a study from the hospital that holds it into your node, with its provenance."""
    body: dict[str, Any] = {"patient": patient, "source": source, "purpose": purpose}
    if break_glass is not None:
        body["breakGlass"] = {"reason": break_glass}
    status, value = _call(
        "POST",
        f"{node.rstrip('/')}/network/studies/{study}/$retrieve",
        token_file,
        ca_cert,
        body=body,
    )
    if status != 200:
        raise _fail(status, value, as_json)
    if as_json:
        typer.echo(json.dumps(value, indent=2))
        return
    basis = (
        f"break-glass {value.get('breakGlassTx')}"
        if value.get("breakGlassTx")
        else f"consent {value.get('consentRef')}"
    )
    typer.echo(
        f"stored {value.get('instances')} instance(s) of {value.get('studyInstanceUID')} from "
        f"{value.get('source', {}).get('hospitalId')} (transfer {value.get('transferId')}, {basis})"
    )
