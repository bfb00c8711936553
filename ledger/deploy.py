"""Deploy the contract suite and read/write the deployment file nodes share."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_utils.address import is_address, to_checksum_address

from ledger.chain import Chain, rpc_errors
from ledger.errors import ARTIFACTS_DIR, ConfigurationError, NotDeployedError

DEPLOYMENT_FILE = "deployment.json"
DEFAULT_VOTING_PERIOD = 7 * 24 * 3600
CONTRACT_NAMES = ("ConsortiumRegistry", "ConsentRegistry", "AuditAnchor")


@dataclass(frozen=True)
class Deployment:
    """Where the suite lives on a chain."""

    chain_id: int
    consortium_registry: str
    consent_registry: str
    audit_anchor: str
    block_number: int

    def to_json(self) -> dict[str, Any]:
        """The deployment file's content."""
        return asdict(self)


@dataclass(frozen=True)
class MemberInfo:
    """A hospital's registry entry as the operator gives it."""

    hospital_id: str
    account: str
    endpoint: str
    tls_fingerprint: bytes = b"\x00" * 32

    def as_tuple(self) -> tuple[bytes, str, str, bytes, int]:
        """The Member struct for the constructor (status Active)."""
        return (
            hospital_id_bytes(self.hospital_id),
            checksum(self.account),
            self.endpoint,
            self.tls_fingerprint,
            1,
        )


def checksum(address: str) -> str:
    """A checksummed address, or ConfigurationError for anything else."""
    if not isinstance(address, str) or not is_address(address):
        raise ConfigurationError(f"not an Ethereum address: {address!r}")
    return to_checksum_address(address)


def address_topic(address: str) -> bytes:
    """An indexed ``address`` event argument as a log topic (left-padded to 32 bytes)."""
    return b"\x00" * 12 + bytes.fromhex(checksum(address)[2:])


def hospital_id_bytes(hospital_id: str) -> bytes:
    """A hospital id as bytes32 (UTF-8, at most 32 bytes, zero-padded)."""
    raw = hospital_id.encode()
    if not raw or len(raw) > 32:
        raise ConfigurationError("a hospital id is 1 to 32 bytes of UTF-8")
    return raw.ljust(32, b"\x00")


def hospital_id_str(raw: bytes) -> str:
    """The hospital id stored as bytes32."""
    return bytes(raw).rstrip(b"\x00").decode(errors="replace")


def fingerprint_bytes(text: str | None) -> bytes:
    """A SHA-256 TLS certificate fingerprint ('AB:CD:..' or hex) as bytes32."""
    if not text:
        return b"\x00" * 32
    clean = text.replace(":", "").strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(clean)
    except ValueError:
        raise ConfigurationError("a TLS fingerprint is a SHA-256 digest in hex") from None
    if len(raw) != 32:
        raise ConfigurationError("a TLS fingerprint is a SHA-256 digest (32 bytes)")
    return raw


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """A compiled artifact (abi, bytecode) from contracts/artifacts."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        artifact: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotDeployedError(f"contract artifact missing: {path}") from None
    return artifact


def deploy_suite(
    chain: Chain, founders: list[MemberInfo], voting_period: int = DEFAULT_VOTING_PERIOD
) -> Deployment:
    """Deploy ConsortiumRegistry, ConsentRegistry and AuditAnchor; return where they are."""
    if not founders:
        raise ConfigurationError("at least one founding member is needed")
    reg = load_artifact("ConsortiumRegistry")
    con = load_artifact("ConsentRegistry")
    anc = load_artifact("AuditAnchor")
    reg_addr, receipt = chain.deploy(
        reg["abi"], reg["bytecode"], [f.as_tuple() for f in founders], voting_period
    )
    con_addr, _ = chain.deploy(con["abi"], con["bytecode"], reg_addr)
    anc_addr, _ = chain.deploy(anc["abi"], anc["bytecode"], reg_addr, con_addr)
    return Deployment(
        chain_id=chain.chain_id,
        consortium_registry=reg_addr,
        consent_registry=con_addr,
        audit_anchor=anc_addr,
        block_number=int(receipt["blockNumber"]),
    )


def save_deployment(data_dir: Path, deployment: Deployment) -> Path:
    """Write deployment.json atomically into the data directory."""
    path = Path(data_dir) / DEPLOYMENT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(deployment.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def parse_deployment(blob: dict[str, Any]) -> Deployment:
    """Validate a deployment file's content."""
    try:
        return Deployment(
            chain_id=int(blob["chain_id"]),
            consortium_registry=checksum(blob["consortium_registry"]),
            consent_registry=checksum(blob["consent_registry"]),
            audit_anchor=checksum(blob["audit_anchor"]),
            block_number=int(blob["block_number"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"malformed deployment file: {exc}") from None


def load_deployment(data_dir: Path) -> Deployment:
    """Read deployment.json from the data directory."""
    path = Path(data_dir) / DEPLOYMENT_FILE
    try:
        blob = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotDeployedError(
            f"no {DEPLOYMENT_FILE} in {data_dir}: run `pacsmesh ledger deploy` "
            "or copy the consortium's deployment file there"
        ) from None
    except ValueError:
        raise ConfigurationError(f"{path} is not valid JSON") from None
    return parse_deployment(blob)


def check_deployment(chain: Chain, deployment: Deployment) -> None:
    """Refuse a deployment made on another chain or whose contracts are absent."""
    if deployment.chain_id != chain.chain_id:
        raise NotDeployedError(
            f"deployment is for chain {deployment.chain_id}, connected chain is {chain.chain_id}"
        )
    with rpc_errors():
        code = chain.w3.eth.get_code(deployment.consortium_registry)  # type: ignore[arg-type]
    if not code:
        raise NotDeployedError("no ConsortiumRegistry code at the deployed address")


def contract(chain: Chain, name: str, address: str) -> Any:
    """A web3 contract object for one of the suite's contracts."""
    return chain.w3.eth.contract(address=checksum(address), abi=load_artifact(name)["abi"])  # type: ignore[call-overload]
