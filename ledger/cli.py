"""Command line for the chain side of the ledger: ledger, consortium, patient and consent apps.

Every command takes --data-dir (keys, deployment file, embedded chain journal), --rpc (a real
chain; without it the embedded chain in the data directory) and --json. Errors print one line
and exit 2; `consent check` exits 0 when permitted and 1 when not.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ledger.cli_pki import register_pki_commands
from ledger.errors import ConfigurationError, LedgerError

if TYPE_CHECKING:
    from ledger.chain import Chain
    from ledger.deploy import Deployment

ledger_app = typer.Typer(help="Deploy and inspect the pacsmesh contracts.", no_args_is_help=True)
consortium_app = typer.Typer(help="Consortium members and membership votes.", no_args_is_help=True)
patient_app = typer.Typer(help="Patient keys.", no_args_is_help=True)
consent_app = typer.Typer(help="Patient consent grants.", no_args_is_help=True)
register_pki_commands(consortium_app)  # init-ca, sign-csr (issue #6)

EXIT_ERROR = 2
PATIENT_PASSWORD_ENV = "PACSMESH_PATIENT_KEY_PASSWORD"

DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="PACSMESH_DATA_DIR",
        help="Node data directory (keys, deployment file, embedded chain state).",
    ),
]
Rpc = Annotated[
    str | None,
    typer.Option(
        "--rpc", envvar="PACSMESH_RPC_URL", help="JSON-RPC URL of a real chain (default: embedded)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Confirmations = Annotated[
    int, typer.Option("--confirmations", min=0, help="Blocks a read waits behind the head.")
]


def _fail(message: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"error": message}))
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


@contextmanager
def _errors(as_json: bool) -> Iterator[None]:
    """Render ledger errors as one line and exit status 2 (never a traceback)."""
    try:
        yield
    except LedgerError as exc:
        _fail(f"{type(exc).__name__}: {exc}", as_json)


def _emit(payload: dict[str, Any] | list[Any], text: str, as_json: bool) -> None:
    typer.echo(json.dumps(payload, sort_keys=True) if as_json else text)


@contextmanager
def _connected(
    data_dir: Path, rpc: str | None, confirmations: int = 0, need_deployment: bool = True
) -> Iterator[tuple[Chain, Deployment | None]]:
    from ledger.chain import connect
    from ledger.deploy import check_deployment, load_deployment

    deployment = load_deployment(data_dir) if need_deployment else None
    chain = connect(data_dir, rpc, confirmations=confirmations)
    try:
        if deployment is not None:
            check_deployment(chain, deployment)
        yield chain, deployment
    finally:
        chain.close()


def parse_time(text: str | None, now: float | None = None) -> int:
    """Unix seconds from ISO 8601, plain seconds, or a relative '+30d' / '12h' / '90m'."""
    if not text:
        return 0
    text = text.strip()
    base = time.time() if now is None else now
    rel = re.fullmatch(r"\+?(\d+)\s*([smhdw])", text)
    if rel:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[rel.group(2)]
        return int(base) + int(rel.group(1)) * scale
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"cannot read time {text!r}: use ISO 8601, Unix seconds, or +30d"
        ) from None
    if parsed.tzinfo is None:
        raise ConfigurationError(f"time {text!r} needs a time zone (e.g. Z)")
    return int(parsed.timestamp())


def _read_password(password_file: Path | None, confirm: bool = False) -> str:
    if password_file is not None:
        try:
            return password_file.read_text().rstrip("\n")
        except OSError:
            raise ConfigurationError(f"cannot read password file {password_file}") from None
    env = os.environ.get(PATIENT_PASSWORD_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise ConfigurationError(f"no password: use --password-file or set {PATIENT_PASSWORD_ENV}")
    value: str = typer.prompt("Key password", hide_input=True, confirmation_prompt=confirm)
    return value


# -- ledger -------------------------------------------------------------------------------------


@ledger_app.command("deploy")
def ledger_deploy(
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    hospital_id: Annotated[
        str, typer.Option(help="This node's hospital id (founding member).")
    ] = "hospital-1",
    endpoint: Annotated[str, typer.Option(help="This node's endpoint URL.")] = "",
    tls_fingerprint: Annotated[
        str, typer.Option(help="SHA-256 of this node's TLS certificate (hex).")
    ] = "",
    founder: Annotated[
        list[str] | None,
        typer.Option(help="Another founding member: HOSPITAL_ID,ACCOUNT,ENDPOINT[,FINGERPRINT]."),
    ] = None,
    voting_period: Annotated[int, typer.Option(min=60, help="Seconds a proposal stays open.")] = (
        7 * 24 * 3600
    ),
    force: Annotated[bool, typer.Option(help="Deploy even if a deployment file exists.")] = False,
) -> None:
    """Deploy the contract suite with this node as a founding member; write deployment.json."""
    from ledger.deploy import (
        DEPLOYMENT_FILE,
        MemberInfo,
        deploy_suite,
        fingerprint_bytes,
        save_deployment,
    )

    with _errors(as_json):
        if (data_dir / DEPLOYMENT_FILE).exists() and not force:
            raise ConfigurationError(
                f"{data_dir / DEPLOYMENT_FILE} exists; pass --force to deploy a new suite"
            )
        with _connected(data_dir, rpc, need_deployment=False) as (chain, _):
            founders = [
                MemberInfo(hospital_id, chain.address, endpoint, fingerprint_bytes(tls_fingerprint))
            ]
            for spec in founder or []:
                parts = spec.split(",")
                if len(parts) not in (3, 4):
                    raise ConfigurationError(
                        f"--founder {spec!r}: expected HOSPITAL_ID,ACCOUNT,ENDPOINT[,FINGERPRINT]"
                    )
                fp = fingerprint_bytes(parts[3] if len(parts) == 4 else "")
                founders.append(MemberInfo(parts[0], parts[1], parts[2], fp))
            deployment = deploy_suite(chain, founders, voting_period)
            path = save_deployment(data_dir, deployment)
        payload = {**deployment.to_json(), "deployment_file": str(path)}
        _emit(
            payload,
            "\n".join(
                [
                    f"chain id            {deployment.chain_id}",
                    f"ConsortiumRegistry  {deployment.consortium_registry}",
                    f"ConsentRegistry     {deployment.consent_registry}",
                    f"AuditAnchor         {deployment.audit_anchor}",
                    f"deployed at block   {deployment.block_number}",
                    f"written to          {path}",
                ]
            ),
            as_json,
        )


@ledger_app.command("status")
def ledger_status(
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    confirmations: Confirmations = 0,
) -> None:
    """Show the chain, this node's account, and (once deployed) its membership and anchor.

    Works before deployment too, so an operator can read the node account to fund it.
    """
    from ledger.anchor import AuditAnchorClient
    from ledger.chain import rpc_errors
    from ledger.consortium import ConsortiumClient
    from ledger.deploy import DEPLOYMENT_FILE

    deployed = (data_dir / DEPLOYMENT_FILE).exists()
    with (
        _errors(as_json),
        _connected(data_dir, rpc, confirmations, need_deployment=deployed) as (chain, deployment),
    ):
        with rpc_errors():
            balance = int(chain.w3.eth.get_balance(chain.address))  # type: ignore[arg-type]
        payload: dict[str, Any] = {
            "chain": "embedded" if chain.is_embedded else chain.rpc_url,
            "chain_id": chain.chain_id,
            "head_block": chain.block_number(),
            "confirmed_block": chain.confirmed_block(),
            "node_account": chain.address,
            "balance_wei": balance,
            "member_status": None,
            "hospital_id": None,
            "deployment": None,
            "latest_anchor": None,
        }
        if deployment is not None:
            member = ConsortiumClient(chain, deployment).member(chain.address)
            latest = AuditAnchorClient(chain, deployment).latest(chain.address)
            payload["member_status"] = member.status.name.lower()
            payload["hospital_id"] = member.hospital_id or None
            payload["deployment"] = deployment.to_json()
            if latest is not None:
                payload["latest_anchor"] = {"size": latest[0], "root": "0x" + latest[1].hex()}
        lines = [f"{k:16} {v}" for k, v in payload.items() if k != "deployment"]
        if deployment is None:
            lines.append(
                "deployment       none: run `pacsmesh ledger deploy` or copy deployment.json"
            )
        _emit(payload, "\n".join(lines), as_json)


# -- consortium -----------------------------------------------------------------------------------


@consortium_app.command("list")
def consortium_list(
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    proposals: Annotated[bool, typer.Option(help="Also list membership proposals.")] = False,
) -> None:
    """List members (and, with --proposals, membership proposals)."""
    from ledger.consortium import ConsortiumClient

    with _errors(as_json), _connected(data_dir, rpc) as (chain, deployment):
        assert deployment is not None
        client = ConsortiumClient(chain, deployment)
        members = client.members()
        props = client.proposals() if proposals else []
        payload: dict[str, Any] = {"members": [m.to_json() for m in members]}
        lines = [
            f"{m.hospital_id:20} {m.account} {m.status.name.lower():8} {m.endpoint}"
            for m in members
        ]
        if proposals:
            payload["proposals"] = [p.to_json() for p in props]
            lines += [
                f"#{p.proposal_id} {p.kind.name.lower()} {p.account} {p.status.name.lower()} "
                f"yes={p.yes_votes} no={p.no_votes}"
                for p in props
            ]
        _emit(payload, "\n".join(lines), as_json)


@consortium_app.command("propose")
def consortium_propose(
    action: Annotated[str, typer.Argument(help="add, update or remove")],
    account: Annotated[str, typer.Option(help="The member's node account.")],
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    hospital_id: Annotated[str, typer.Option(help="Hospital id (add/update).")] = "",
    endpoint: Annotated[str, typer.Option(help="Endpoint URL (add/update).")] = "",
    tls_fingerprint: Annotated[str, typer.Option(help="TLS certificate SHA-256 (hex).")] = "",
) -> None:
    """Propose adding, updating or removing a member (your yes vote is counted)."""
    from ledger.consortium import ConsortiumClient, ProposalKind
    from ledger.deploy import fingerprint_bytes

    with _errors(as_json):
        try:
            kind = ProposalKind[action.upper()]
        except KeyError:
            raise ConfigurationError("action must be add, update or remove") from None
        if kind is not ProposalKind.REMOVE and not hospital_id:
            raise ConfigurationError("--hospital-id is required to add or update a member")
        with _connected(data_dir, rpc) as (chain, deployment):
            assert deployment is not None
            client = ConsortiumClient(chain, deployment)
            pid = client.propose(
                kind, account, hospital_id, endpoint, fingerprint_bytes(tls_fingerprint)
            )
            proposal = client.proposal(pid)
        _emit(
            proposal.to_json(),
            f"proposal #{pid} ({kind.name.lower()} {proposal.account}): "
            f"{proposal.status.name.lower()}",
            as_json,
        )


@consortium_app.command("vote")
def consortium_vote(
    proposal_id: Annotated[int, typer.Argument(help="The proposal number.")],
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    yes: Annotated[bool, typer.Option("--yes/--no", help="Vote for or against.")] = True,
) -> None:
    """Vote on a membership proposal."""
    from ledger.consortium import ConsortiumClient

    with _errors(as_json), _connected(data_dir, rpc) as (chain, deployment):
        assert deployment is not None
        proposal = ConsortiumClient(chain, deployment).vote(proposal_id, yes)
        _emit(
            proposal.to_json(),
            f"proposal #{proposal_id}: {proposal.status.name.lower()} "
            f"(yes={proposal.yes_votes} no={proposal.no_votes})",
            as_json,
        )


# -- patient ------------------------------------------------------------------------------------


@patient_app.command("keygen")
def patient_keygen(
    out: Annotated[Path, typer.Option("--out", help="Key file to create (never overwritten).")],
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    password_file: Annotated[
        Path | None, typer.Option(help="File holding the key's password.")
    ] = None,
) -> None:
    """Create an encrypted patient key file and print the patient's address."""
    from ledger.keystore import generate_key_file

    del data_dir, rpc  # accepted for uniformity; a key needs no chain
    with _errors(as_json):
        account = generate_key_file(out, _read_password(password_file, confirm=True))
        _emit({"address": account.address, "key_file": str(out)}, account.address, as_json)


# -- consent ------------------------------------------------------------------------------------

Grantee = Annotated[str, typer.Option(help="Member hospital id or account, or 'all'.")]
PurposeOpt = Annotated[str, typer.Option(help="treatment, research or ai-training.")]
Study = Annotated[
    str | None, typer.Option(help="Study Instance UID (default: all of the patient's studies).")
]
PatientKey = Annotated[Path, typer.Option(help="The patient's encrypted key file.")]
PasswordFile = Annotated[Path | None, typer.Option(help="File holding the key's password.")]


def _grantee(chain: Chain, deployment: Deployment, grantee: str) -> str:
    from ledger.consent import ALL_MEMBERS
    from ledger.consortium import ConsortiumClient

    if grantee.strip().lower() == "all":
        return ALL_MEMBERS
    return ConsortiumClient(chain, deployment).resolve(grantee.strip())


def _signed_change(
    revoke: bool,
    data_dir: Path,
    rpc: str | None,
    as_json: bool,
    patient_key: Path,
    password_file: Path | None,
    grantee: str,
    purpose: str,
    study: str | None,
    valid_from: str | None,
    expires: str | None,
) -> None:
    from ledger.consent import ConsentClient, Purpose, study_hash
    from ledger.keystore import read_key_file

    with _errors(as_json):
        purpose_code = Purpose.parse(purpose)
        patient = read_key_file(patient_key, _read_password(password_file))
        with _connected(data_dir, rpc) as (chain, deployment):
            assert deployment is not None
            client = ConsentClient(chain, deployment)
            grantee_account = _grantee(chain, deployment, grantee)
            request = client.request(
                patient.address,
                grantee_account,
                purpose_code,
                study_hash(study),
                valid_from=parse_time(valid_from),
                expires_at=parse_time(expires),
                revoke=revoke,
            )
            tx_hash = client.relay(client.sign(patient, request))
        payload = {
            "action": "revoke" if revoke else "grant",
            "patient": patient.address,
            "grantee": "all" if grantee.strip().lower() == "all" else grantee_account,
            "purpose": purpose_code.label,
            "study_hash": "0x" + study_hash(study).hex() if study else "all",
            "valid_from": request.valid_from or None,
            "expires_at": request.expires_at or None,
            "tx_hash": tx_hash,
        }
        verb = "revoked" if revoke else "granted"
        _emit(payload, f"{verb}: {purpose_code.label} → {payload['grantee']} ({tx_hash})", as_json)


@consent_app.command("grant")
def consent_grant(
    patient_key: PatientKey,
    grantee: Grantee,
    purpose: PurposeOpt,
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    study: Study = None,
    expires: Annotated[
        str | None, typer.Option(help="Expiry: ISO 8601, Unix seconds or +30d.")
    ] = None,
    valid_from: Annotated[str | None, typer.Option(help="Start (default: now).")] = None,
    password_file: PasswordFile = None,
) -> None:
    """The patient signs a grant (EIP-712); this node relays it."""
    _signed_change(
        False, data_dir, rpc, as_json, patient_key, password_file, grantee, purpose, study,
        valid_from, expires,
    )  # fmt: skip


@consent_app.command("revoke")
def consent_revoke(
    patient_key: PatientKey,
    grantee: Grantee,
    purpose: PurposeOpt,
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    study: Study = None,
    password_file: PasswordFile = None,
) -> None:
    """The patient signs a revocation (same selectors as the grant); this node relays it."""
    _signed_change(
        True, data_dir, rpc, as_json, patient_key, password_file, grantee, purpose, study,
        None, None,
    )  # fmt: skip


@consent_app.command("list")
def consent_list(
    patient: Annotated[str, typer.Option(help="The patient's address.")],
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    confirmations: Confirmations = 0,
) -> None:
    """List a patient's grants (from the consent events)."""
    from ledger.consent import ConsentCache
    from ledger.deploy import checksum

    with _errors(as_json), _connected(data_dir, rpc, confirmations) as (chain, deployment):
        cache = ConsentCache(chain, deployment)
        block = cache.sync()
        grants = cache.grants_of(checksum(patient))
        now = max(time.time(), chain.block_timestamp(block))
        rows = [{**g.to_json(), "in_force": g.in_force(now)} for g in grants]
        payload = {"synced_block": block, "grants": rows}
        lines = [
            f"{g['purpose']:12} grantee={g['grantee']} study={g['study_hash']} "
            f"from={g['valid_from']} expires={g['expires_at']}"
            f"{'' if g['in_force'] else ' (not in force)'}"
            for g in rows
        ] or ["no grants"]
        _emit(payload, "\n".join(lines), as_json)


@consent_app.command("check")
def consent_check(
    patient: Annotated[str, typer.Option(help="The patient's address.")],
    grantee: Annotated[str, typer.Option(help="Member hospital id or account.")],
    purpose: PurposeOpt,
    data_dir: DataDir = Path("data"),
    rpc: Rpc = None,
    as_json: AsJson = False,
    study: Study = None,
    confirmations: Confirmations = 0,
) -> None:
    """Exit 0 when the access is permitted now, 1 when it is not."""
    from ledger.consent import ConsentCache, Purpose, study_hash
    from ledger.consortium import ConsortiumClient
    from ledger.deploy import checksum

    with _errors(as_json):
        purpose_code = Purpose.parse(purpose)
        with _connected(data_dir, rpc, confirmations) as (chain, deployment):
            assert deployment is not None
            grantee_account = ConsortiumClient(chain, deployment).resolve(grantee.strip())
            cache = ConsentCache(chain, deployment)
            cache.sync()
            decision = cache.check(
                checksum(patient), grantee_account, purpose_code, study_hash(study)
            )
    _emit(
        {**decision.to_json(), "grantee": grantee_account, "purpose": purpose_code.label},
        f"{'permitted' if decision.permitted else 'not permitted'} "
        f"(synced to block {decision.synced_block})",
        as_json,
    )
    raise typer.Exit(0 if decision.permitted else 1)


def main() -> None:
    """Entry point for `python -m ledger.cli GROUP COMMAND ...` during development."""
    root = typer.Typer(no_args_is_help=True)
    root.add_typer(ledger_app, name="ledger")
    root.add_typer(consortium_app, name="consortium")
    root.add_typer(patient_app, name="patient")
    root.add_typer(consent_app, name="consent")
    root()


if __name__ == "__main__":
    main()
