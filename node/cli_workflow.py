"""Admin commands for the imaging workflow: `pacsmesh node reconcile ...` and `... outbox ...`.

They talk to the running node's /admin endpoints: the node process holds the data directory's
lock and owns the database while it runs, and going through it keeps every change on the one
service path (matching, outbox) that HL7 and DICOM use. Opening the index beside a running node
would bypass that and, on SQLite, contend with its writer.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer

reconcile_app = typer.Typer(
    help="Studies that arrived without a matching order: list and resolve.", no_args_is_help=True
)
outbox_app = typer.Typer(
    help="HL7 messages to the order system: status and resend.", no_args_is_help=True
)

NodeUrl = Annotated[
    str, typer.Option("--node", envvar="PACSMESH_NODE_URL", help="the node's base URL")
]
DEFAULT_NODE = "http://127.0.0.1:8080"
# /admin is for the admin role: `pacsmesh node user token ADMIN` prints one.
NodeToken = Annotated[
    str | None,
    typer.Option("--token", envvar="PACSMESH_TOKEN", help="an admin's bearer token"),
]


def _call(method: str, url: str, token: str | None, body: dict[str, Any] | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the node: {type(exc).__name__}", err=True)
        raise typer.Exit(2) from exc
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)
    return response.json()


def _print(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@reconcile_app.command("list")
def reconcile_list(
    node: NodeUrl = DEFAULT_NODE,
    token: NodeToken = None,
    include_resolved: Annotated[bool, typer.Option("--all", help="include resolved items")] = False,
) -> None:
    """Studies waiting for an admin, with why they did not match (JSON)."""
    params = "?include_resolved=true" if include_resolved else ""
    _print(_call("GET", f"{node.rstrip('/')}/admin/reconciliation{params}", token))


@reconcile_app.command("resolve")
def reconcile_resolve(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID of the queued study")],
    order: Annotated[str, typer.Option("--order", help="accession number of the order")],
    node: NodeUrl = DEFAULT_NODE,
    token: NodeToken = None,
    by: Annotated[str, typer.Option("--by", help="who resolves (kept with the item)")] = "admin",
) -> None:
    """Attach a queued study to an order: the order completes and the OCS is told."""
    body = {"accession_number": order, "resolved_by": by}
    _print(
        _call("POST", f"{node.rstrip('/')}/admin/reconciliation/{study_uid}/resolve", token, body)
    )


@outbox_app.command("list")
def outbox_list(
    node: NodeUrl = DEFAULT_NODE,
    token: NodeToken = None,
    status: Annotated[
        str | None, typer.Option(help="pending | delivered | rejected (default: all)")
    ] = None,
) -> None:
    """Outbound messages, newest first, with attempts and the last error (JSON)."""
    params = f"?status={status}" if status else ""
    _print(_call("GET", f"{node.rstrip('/')}/admin/outbox{params}", token))


@outbox_app.command("retry")
def outbox_retry(
    message_key: Annotated[int, typer.Argument(help="the message's key (from outbox list)")],
    node: NodeUrl = DEFAULT_NODE,
    token: NodeToken = None,
) -> None:
    """Queue a rejected message again (after the problem was fixed at the OCS)."""
    _print(_call("POST", f"{node.rstrip('/')}/admin/outbox/{message_key}/retry", token))


def mount(node_app: typer.Typer) -> None:
    """Add `reconcile` and `outbox` under `pacsmesh node`."""
    node_app.add_typer(reconcile_app, name="reconcile")
    node_app.add_typer(outbox_app, name="outbox")
