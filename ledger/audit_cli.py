"""Command line for the audit log: append events, anchor the root, prove an entry, verify it all.

Every command takes --data-dir (where audit.sqlite, keys, the deployment file and the embedded
chain live), --rpc (a real chain; without it the embedded chain in the data directory), --json
and --database (a database URL instead of DATA_DIR/audit.sqlite, e.g. PostgreSQL). Exit status:
0 success, 1 a proof or the log does not verify, 2 bad input or an unreachable chain.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from ledger.anchor import AuditAnchorClient
    from ledger.audit_log import AuditLog
    from ledger.chain import Chain
    from ledger.deploy import Deployment

audit_app = typer.Typer(
    help="The node's tamper-evident audit log (RFC 6962 Merkle tree, anchored on chain).",
    no_args_is_help=True,
)

AUDIT_DB_FILE = "audit.sqlite"
EXIT_UNVERIFIED = 1
EXIT_ERROR = 2

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="PACSMESH_DATA_DIR",
        help="Node data directory (audit log, keys, deployment file, embedded chain state).",
    ),
]
Rpc = Annotated[
    str | None,
    typer.Option(
        "--rpc", envvar="PACSMESH_RPC_URL", help="JSON-RPC URL of a real chain (default: embedded)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        envvar="PACSMESH_AUDIT_DATABASE_URL",
        help="Audit log database URL (default: sqlite file DATA_DIR/audit.sqlite).",
    ),
]


class _UsageError(Exception):
    """Bad input to a command (a file that cannot be read, malformed JSON)."""


def _fail(message: str, as_json: bool, code: int = EXIT_ERROR) -> None:
    if as_json:
        typer.echo(json.dumps({"error": message}))
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors(as_json: bool) -> Iterator[None]:
    """Typed errors become one line and exit status 2, never a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from ledger.audit_events import AuditEventError
    from ledger.audit_log import AuditLogError
    from ledger.errors import LedgerError

    try:
        yield
    except (AuditEventError, AuditLogError, LedgerError, _UsageError) as exc:
        _fail(f"{type(exc).__name__}: {exc}", as_json)
    except SQLAlchemyError as exc:
        # The driver's first line says what failed (unreachable, refused, bad URL) without
        # the statement or its parameters.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        _fail(f"audit database error ({type(exc).__name__}): {reason}", as_json)


def _emit(payload: dict[str, Any], text: str, as_json: bool) -> None:
    typer.echo(json.dumps(payload, sort_keys=True) if as_json else text)


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


@contextmanager
def _opened_log(data_dir: Path, database: str | None, create: bool = False) -> Iterator[AuditLog]:
    from ledger.audit_log import AuditLog

    path = data_dir / AUDIT_DB_FILE
    if database is None and not create and not path.exists():
        raise _UsageError(f"no audit log at {path}: append an event first, or pass --database")
    log = AuditLog.open(database or path)
    try:
        yield log
    finally:
        log.close()


@contextmanager
def _deployed_chain(
    data_dir: Path, rpc: str | None, *, auditor: bool = False
) -> Iterator[tuple[Chain, Deployment]]:
    """The chain and the consortium's deployment on it (checked). As ``auditor``, a read-only
    connection: a throwaway account on a real chain (no key file is written), the data
    directory's own on the embedded one."""
    from eth_account import Account

    from ledger.chain import connect
    from ledger.deploy import check_deployment, load_deployment

    deployment = load_deployment(data_dir)
    chain = connect(data_dir, rpc, account=Account.create() if auditor and rpc else None)
    try:
        check_deployment(chain, deployment)
        yield chain, deployment
    finally:
        chain.close()


@contextmanager
def _anchor_client(data_dir: Path, rpc: str | None) -> Iterator[tuple[Chain, AuditAnchorClient]]:
    from ledger.anchor import AuditAnchorClient

    with _deployed_chain(data_dir, rpc) as (chain, deployment):
        yield chain, AuditAnchorClient(chain, deployment)


def _read_events(source: str) -> list[Any]:
    """Events from a file or stdin: one JSON object, a JSON array, or JSON Lines."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"cannot read events from {source}: {type(exc).__name__}") from None
    text = text.strip()
    if not text:
        raise _UsageError(f"no events in {source}")
    try:
        value = json.loads(text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            return [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            # The position only: the text itself may hold what must not reach a terminal log.
            raise _UsageError(f"{source} is neither JSON nor JSON Lines ({exc.msg})") from None
    return value if isinstance(value, list) else [value]


@audit_app.command("append")
def audit_append(
    event: Annotated[
        str,
        typer.Option("--event", help="Event file (JSON object, array or JSON Lines); - = stdin."),
    ],
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    database: Database = None,
) -> None:
    """Record audit events (all or none); print their indices and the new root."""
    from ledger.audit_events import parse_event

    del rpc  # appending never needs the chain: events are durable locally and anchored later
    with _errors(as_json):
        events = [parse_event(e) for e in _read_events(event)]
        with _opened_log(data_dir, database, create=True) as log:
            indices = log.append_many(events)
            size = log.size()
            root = log.root(size)
    payload = {"indices": indices, "size": size, "root": _hex(root)}
    shown = ", ".join(str(i) for i in indices)
    _emit(payload, f"appended entries {shown}\nsize {size}\nroot {_hex(root)}", as_json)


@audit_app.command("anchor")
def audit_anchor(
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    database: Database = None,
) -> None:
    """Anchor the log's current root on chain now (re-anchoring anything a reorg removed)."""
    from ledger.anchor import AnchorWorker

    with _errors(as_json), _opened_log(data_dir, database) as log:
        with _anchor_client(data_dir, rpc) as (_chain, client):
            worker = AnchorWorker(log, client, every_events=1, every_seconds=3600.0)
            receipt = worker.run_once(force=True)
            if receipt is None and worker.last_error is not None:
                raise worker.last_error
        size = log.size()
        if receipt is None:
            payload: dict[str, Any] = {"anchored": False, "size": size}
            _emit(payload, f"nothing to anchor: all {size} entries are anchored", as_json)
            return
        root = log.root(size)
        payload = {
            "anchored": True,
            "size": size,
            "root": _hex(root),
            "tx_hash": receipt.tx_hash,
            "block_number": receipt.block_number,
        }
        text = (
            f"anchored size {size}\nroot {_hex(root)}\n"
            f"tx {receipt.tx_hash} in block {receipt.block_number}"
        )
        _emit(payload, text, as_json)


@audit_app.command("prove")
def audit_prove(
    index: Annotated[int, typer.Option("--index", min=0, help="The entry to prove.")],
    size: Annotated[
        int | None,
        typer.Option("--size", min=1, help="Tree size to prove against (default: latest anchor)."),
    ] = None,
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    database: Database = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use the anchors the log recorded, not the chain's.")
    ] = False,
) -> None:
    """Print entry N with its inclusion proof against an anchored root (exit 1 if it fails)."""
    from ledger import merkle
    from ledger.audit_events import AuditEvent

    with _errors(as_json), _opened_log(data_dir, database) as log:
        anchors = _anchors(log, data_dir, rpc, offline)
        current = log.size()
        if index >= current:
            raise _UsageError(f"no entry {index}: the log holds {current} entries")
        covering = [a for a in anchors if a[0] > index and a[0] <= current]
        if size is None:
            chosen = max(covering, key=lambda a: a[0]) if covering else None
            size = chosen[0] if chosen else current
        else:
            chosen = next((a for a in covering if a[0] == size), None)
        body = log.entry(index)
        proof = log.inclusion_proof(index, size)
        root = chosen[1] if chosen else log.root(size)
        leaf = merkle.leaf_hash(body)
        ok = merkle.verify_inclusion(index, size, leaf, proof, root)
        event = json.loads(AuditEvent.from_canonical(body).canonical())
    payload = {
        "index": index,
        "size": size,
        "leaf_hash": _hex(leaf),
        "event": event,
        "proof": [_hex(p) for p in proof],
        "root": _hex(root),
        "anchored": chosen is not None,
        "anchor_source": "log" if offline else "chain",
        "verified": ok,
    }
    lines = [
        f"entry {index} of {size} ({'anchored' if chosen else 'NOT anchored yet'})",
        f"leaf hash {_hex(leaf)}",
        f"root {_hex(root)}",
        *(f"proof[{k}] {_hex(p)}" for k, p in enumerate(proof)),
        f"inclusion {'verifies' if ok else 'DOES NOT verify'}",
    ]
    _emit(payload, "\n".join(lines), as_json)
    if not ok:
        raise typer.Exit(EXIT_UNVERIFIED)


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    database: Database = None,
    member: Annotated[
        list[str] | None,
        typer.Option(
            "--member",
            help="Whose anchors to check (default: this node's account); with --node, "
            "URL=ACCOUNT pins the member of a node reached at another address (repeatable).",
        ),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use the anchors the log recorded, not the chain's.")
    ] = False,
    require_anchored: Annotated[
        bool, typer.Option("--require-anchored", help="Also fail while entries await an anchor.")
    ] = False,
    node: Annotated[
        list[str] | None,
        typer.Option(
            "--node",
            help="A node's base URL: read its log over HTTPS with an auditor token and check it, "
            "and the transfers between the nodes given, against the chain (repeatable).",
        ),
    ] = None,
    token_file: Annotated[
        list[str] | None,
        typer.Option(
            "--token-file",
            help="Auditor tokens for --node: URL=FILE per node, a directory of "
            "<hospital id>.token files, or one FILE for every node (repeatable).",
        ),
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            "--ca-cert", help="CA certificate (PEM) the nodes' HTTPS certificates chain to."
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="With --node: a transfer whose other side was not checked fails too."
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1.0, help="Seconds per HTTP request to a node.")
    ] = 30.0,
) -> None:
    """Check the audit log(s) against the chain's anchors; exit 1 naming failing entries.

    Without --node: this node's log in --data-dir (or --database), recomputed in full. With
    --node: each node's log read over HTTPS, and the transfers and accesses between them
    (docs/security-audit.md, "Verifying a consortium"); exit 2 when a node cannot be read.
    """
    if node:
        if database is not None or offline:
            _fail("--database and --offline check a local log; leave them out with --node", as_json)
        _verify_nodes(
            node,
            token_file or [],
            member or [],
            data_dir=data_dir,
            rpc=rpc,
            ca_cert=ca_cert,
            timeout=timeout,
            strict=strict,
            require_anchored=require_anchored,
            as_json=as_json,
        )
        return
    if token_file or ca_cert is not None or strict:
        _fail("--token-file, --ca-cert and --strict go with --node", as_json)
    if member is not None and len(member) > 1:
        _fail("give one --member for a local log", as_json)
    local_member = member[0] if member else None
    with _errors(as_json), _opened_log(data_dir, database) as log:
        anchors = _anchors(log, data_dir, rpc, offline, local_member)
        findings = log.verify(anchors)
        size = log.size()
    anchored = max((s for s, _ in anchors), default=0)
    unanchored = max(0, size - anchored)
    failed = bool(findings) or (require_anchored and unanchored > 0)
    payload = {
        "ok": not failed,
        "size": size,
        "anchors_checked": len(anchors),
        "anchor_source": "log" if offline else "chain",
        "anchored_size": anchored,
        "unanchored": unanchored,
        "findings": [{"kind": f.kind, "index": f.index, "detail": f.detail} for f in findings],
        "failing_entries": sorted({f.index for f in findings if f.index is not None}),
    }
    lines = [str(f) for f in findings]
    if findings:
        lines.append(f"FAILED: {len(findings)} finding(s) in a log of {size} entries")
    else:
        lines.append(
            f"OK: {size} entries recomputed; {len(anchors)} anchor(s) match, up to size {anchored}"
        )
    if unanchored:
        lines.append(f"{unanchored} entries are not anchored yet (run `pacsmesh audit anchor`)")
    _emit(payload, "\n".join(lines), as_json)
    if failed:
        raise typer.Exit(EXIT_UNVERIFIED)


def _verify_nodes(
    nodes: list[str],
    token_files: list[str],
    pins: list[str],
    *,
    data_dir: Path,
    rpc: str | None,
    ca_cert: Path | None,
    timeout: float,
    strict: bool,
    require_anchored: bool,
    as_json: bool,
) -> None:
    """The cross-node verification (ledger/audit_network.py): report, then exit 0, 1 or 2."""
    import ssl

    from ledger.audit_network import (
        AuditInputError,
        TokenSources,
        VerifyOptions,
        parse_pins,
        verify_network,
    )
    from ledger.audit_remote import normalize_url

    try:
        for url in nodes:
            normalize_url(url)
        tls: ssl.SSLContext | bool = True
        if ca_cert is not None:
            try:
                tls = ssl.create_default_context(cafile=str(ca_cert))
            except (OSError, ssl.SSLError) as exc:
                raise AuditInputError(f"cannot load --ca-cert {ca_cert}: {exc}") from None
        options = VerifyOptions(
            tokens=TokenSources.parse(token_files),
            pins=parse_pins(pins),
            tls=tls,
            timeout=timeout,
            strict=strict,
            require_anchored=require_anchored,
        )
    except (AuditInputError, ValueError) as exc:
        _fail(str(exc), as_json)
    with _errors(as_json), _deployed_chain(data_dir, rpc, auditor=True) as (chain, deployment):
        report = verify_network(nodes, chain, deployment, options)
    _emit(report.to_json(), report.to_text(), as_json)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _anchors(
    log: AuditLog, data_dir: Path, rpc: str | None, offline: bool, member: str | None = None
) -> list[tuple[int, bytes]]:
    """(size, root) pairs, oldest first: from the chain, or recorded in the log (offline)."""
    if offline:
        return [(a.size, a.root) for a in log.anchors()]
    with _anchor_client(data_dir, rpc) as (chain, client):
        return [(s, r) for s, r, _block in client.history(member or chain.address)]


if __name__ == "__main__":
    audit_app()
