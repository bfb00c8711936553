"""The `pacsmesh` console script: one entry point for every role (node, ledger, federated)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from node.cli_enroll import enroll
from node.cli_network import network_app
from node.cli_signing_key import signing_key_app
from node.cli_training import training_app
from node.cli_users import user_app
from node.cli_workflow import mount as mount_workflow
from node.errors import NodeError

app = typer.Typer(
    name="pacsmesh",
    help="pacsmesh: a secure federated network for medical images and records.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Run and administer a hospital node.", no_args_is_help=True)
node_app.command("enroll")(enroll)  # TLS identity in the consortium (issue #6)
app.add_typer(node_app, name="node")
node_app.add_typer(user_app, name="user")
node_app.add_typer(signing_key_app, name="signing-key")  # rotate the token-signing key
node_app.add_typer(training_app, name="training")  # labels for the training credential
mount_workflow(node_app)  # pacsmesh node reconcile|outbox
app.add_typer(network_app, name="network")  # pacsmesh network studies|retrieve

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="node data directory (NODE_DATA_DIR)")
]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]


def _settings(**flags: object):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from node.settings import load_settings

    try:
        return load_settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"invalid settings: {problems}")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@node_app.command("serve")
def serve(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    tls_ca_cert: Annotated[
        Path | None,
        typer.Option(help="consortium CA certificate: turns on mutual TLS for peers (PEM)"),
    ] = None,
    tls_client_cert: Annotated[
        str | None,
        typer.Option(
            help="optional (users without certificates on the same port) or required "
            "(a peer-only port)"
        ),
    ] = None,
    database_url: Annotated[str | None, typer.Option(help="index database URL")] = None,
    kek_source: Annotated[
        str | None, typer.Option(help="KEK source: file | file:PATH | env:VAR")
    ] = None,
    dimse_port: Annotated[
        int | None, typer.Option(help="DIMSE port (default 11112; 0 = off)")
    ] = None,
    ae_title: Annotated[str | None, typer.Option(help="this node's AE title")] = None,
    dimse_tls_port: Annotated[
        int | None, typer.Option(help="DICOM TLS port (registered: 2762; default 0 = off)")
    ] = None,
    dimse_tls_cert: Annotated[
        Path | None, typer.Option(help="DICOM TLS certificate (PEM; default --tls-cert)")
    ] = None,
    dimse_tls_key: Annotated[
        Path | None, typer.Option(help="DICOM TLS private key (PEM; default --tls-key)")
    ] = None,
    dimse_tls_ca_cert: Annotated[
        Path | None,
        typer.Option(help="CA file (PEM) that issues modality and workstation certificates"),
    ] = None,
    dimse_tls_client_cert: Annotated[
        str | None, typer.Option(help="required (default) | optional")
    ] = None,
    hl7_port: Annotated[
        int | None, typer.Option(help="HL7 v2 MLLP port (default 2575; 0 = off)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run a node: DICOMweb and FHIR over HTTP(S), DIMSE (plain and/or DICOM TLS) and HL7 v2
    (MLLP) beside them.

    With a certificate it serves HTTPS; with the consortium CA as well, mutual TLS, so peers'
    certificates reach the peer routes. Production nodes refuse to serve without TLS.
    """
    import uvicorn

    from node.app import create_app
    from node.dimse import tls as dimse_tls
    from node.services.archive import Archive
    from node.tls.serving import listening

    settings = _settings(
        data_dir=data_dir,
        config_file=config,
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca_cert=tls_ca_cert,
        tls_client_cert=tls_client_cert,
        database_url=database_url,
        kek_source=kek_source,
        dimse_port=dimse_port,
        ae_title=ae_title,
        dimse_tls_port=dimse_tls_port,
        dimse_tls_cert=dimse_tls_cert,
        dimse_tls_key=dimse_tls_key,
        dimse_tls_ca_cert=dimse_tls_ca_cert,
        dimse_tls_client_cert=dimse_tls_client_cert,
        hl7_port=hl7_port,
    )
    try:
        listen = listening(settings)  # before the archive opens: a TLS mistake stops here
        dimse_tls.check(settings)  # a bad certificate, key or CA file stops here, named
        archive = Archive.open(settings)
    except NodeError as exc:
        _fail(exc.message)
    application = create_app(settings, archive)
    mode = {"http": "HTTP", "https": "HTTPS", "mtls": "HTTPS with consortium mutual TLS"}
    typer.echo(
        f"pacsmesh node serving {settings.base_url}/dicom-web ({mode[listen.mode]})", err=True
    )
    try:
        uvicorn.run(
            application,
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            access_log=False,  # access logs would carry UIDs; the audit log records accesses
            timeout_graceful_shutdown=5,
            **listen.uvicorn,
        )
    finally:
        archive.close()


@node_app.command("rotate-key")
def rotate_key(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    kek_source: Annotated[str | None, typer.Option(help="current KEK source")] = None,
    new_kek_source: Annotated[
        str | None, typer.Option(help="for env: sources, the variable holding the new key")
    ] = None,
) -> None:
    """Re-wrap every study key under a new key-encryption key (the node must be stopped)."""
    from node.services.archive import Archive
    from node.storage.keys import rotate_kek

    settings = _settings(data_dir=data_dir, config_file=config, kek_source=kek_source)
    try:
        archive = Archive.open(settings)
        try:
            new_id = rotate_kek(
                archive.engine, settings.data_dir, settings.kek_source, new_kek_source
            )
        finally:
            archive.close()
    except NodeError as exc:
        _fail(exc.message)
    typer.echo(json.dumps({"kek_id": new_id}))


@node_app.command("import")
def import_archive(
    source: Annotated[str, typer.Option("--from", help="DICOMweb root of the existing archive")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
    token: Annotated[str | None, typer.Option(help="bearer token for the source")] = None,
) -> None:
    """Copy every study of an existing DICOMweb archive into this node."""
    from node.services.archive import Archive
    from node.services.importer import import_from_dicomweb

    settings = _settings(data_dir=data_dir, config_file=config)
    try:
        archive = Archive.open(settings)
    except NodeError as exc:
        _fail(exc.message)
    try:
        report = import_from_dicomweb(archive, source, token=token)
    finally:
        archive.close()
    typer.echo(json.dumps(report.as_dict()))
    if report.failed:
        raise typer.Exit(1)


def _mount_roles() -> None:
    """Mount the ledger and federated command groups (their heavy imports load lazily)."""
    from federated.cli import federated_app
    from ledger.audit_cli import audit_app
    from ledger.cli import consent_app, consortium_app, ledger_app, patient_app
    from node.cli_capture import capture
    from node.cli_patient_link import register as register_sign_link

    for group, name in (
        (ledger_app, "ledger"),
        (consortium_app, "consortium"),
        (patient_app, "patient"),
        (consent_app, "consent"),
        (audit_app, "audit"),
        (federated_app, "federated"),
    ):
        app.add_typer(group, name=name)
    node_app.command("capture")(capture)
    register_sign_link(patient_app)  # pacsmesh patient sign-link (docs/consent.md)


@app.command("demo")
def demo(
    shared: Annotated[Path, typer.Option(help="the shared/ folder with sample data")] = Path(
        "../shared"
    ),
    data_dir: Annotated[Path, typer.Option(help="demo data directory")] = Path("demo-data"),
    port: int = 8080,
    once: Annotated[bool, typer.Option(help="load, print the URLs, then stop")] = False,
) -> None:
    """Start a node on loopback with sample studies loaded and print URLs to try."""
    from node.demo import run_demo

    run_demo(shared, data_dir, port, once=once)


def main() -> None:
    """Run the pacsmesh command line."""
    _mount_roles()
    try:
        app()
    except NodeError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
