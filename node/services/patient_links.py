"""Patient links: a local patient (MRN + issuer) tied to the address of a key the patient holds.

The hospital may link only with the patient's signature over the link, an EIP-712 typed
message (https://eips.ethereum.org/EIPS/eip-712):

    PatientLink(string hospital, bytes32 mrnHash, address patient, uint64 issuedAt,
                uint256 nonce)
    domain: name "pacsmesh PatientLink", version "1"

`mrnHash` is keccak256 of "issuer|mrn", so the MRN itself is never part of what the patient's
wallet shows or signs in clear, and never leaves this node. The signature must recover to
`patient`, name this node's hospital id and this patient's MRN hash, be fresh (issuedAt within
LINK_MAX_AGE_SECONDS), and be new (its nonce unused for that address): a replayed or
re-submitted link is refused and nothing is stored.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address
from eth_utils.crypto import keccak
from sqlalchemy import Connection, Engine, Table, and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ledger.consent import SECP256K1_HALF_N
from node.errors import ConflictError, InvalidRequestError, NotFoundError
from node.storage.links_index import PatientLink

LINK_T: Final = cast(Table, PatientLink.__table__)  # type: ignore[attr-defined]
DOMAIN_NAME: Final = "pacsmesh PatientLink"
DOMAIN_VERSION: Final = "1"
# A link signature is handed from the patient's device to the registration desk: a day is
# ample, and an old signature (from before an unlink, say) cannot be brought back.
LINK_MAX_AGE_SECONDS: Final = 24 * 3600
CLOCK_SKEW_SECONDS: Final = 300

_TYPES: Final = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
    ],
    "PatientLink": [
        {"name": "hospital", "type": "string"},
        {"name": "mrnHash", "type": "bytes32"},
        {"name": "patient", "type": "address"},
        {"name": "issuedAt", "type": "uint64"},
        {"name": "nonce", "type": "uint256"},
    ],
}


class LinkSignatureError(InvalidRequestError):
    """The link signature is not the patient's, or not for this hospital and patient."""

    fhir_code = "security"


class LinkReplayError(ConflictError):
    """The link signature was used before (a replay) or the address is already linked."""


def mrn_hash(mrn: str, issuer: str = "") -> bytes:
    """keccak256("issuer|mrn"): how a signed link names the patient without the MRN."""
    return keccak(text=f"{issuer}|{mrn}")


@dataclass(frozen=True)
class SignedLink:
    """A patient's signed link, as `pacsmesh patient sign-link` prints it."""

    hospital: str
    mrn_hash: bytes
    patient: str
    issued_at: int
    nonce: int
    signature: bytes  # r (32) + s (32) + v (1)

    def typed_data(self) -> dict[str, Any]:
        """The EIP-712 message that was signed."""
        return link_typed_data(
            self.hospital, self.mrn_hash, self.patient, self.issued_at, self.nonce
        )

    def to_parameters(self) -> dict[str, Any]:
        """A FHIR Parameters resource, the body of `POST /fhir/Patient/{id}/$link`."""
        values = {
            "hospital": self.hospital,
            "mrnHash": "0x" + self.mrn_hash.hex(),
            "address": self.patient,
            "issuedAt": str(self.issued_at),
            "nonce": hex(self.nonce),
            "signature": "0x" + self.signature.hex(),
        }
        return {
            "resourceType": "Parameters",
            "parameter": [{"name": k, "valueString": v} for k, v in values.items()],
        }


def link_typed_data(
    hospital: str, mrn_digest: bytes, patient: str, issued_at: int, nonce: int
) -> dict[str, Any]:
    """The EIP-712 typed data of a link."""
    return {
        "types": _TYPES,
        "primaryType": "PatientLink",
        "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION},
        "message": {
            "hospital": hospital,
            "mrnHash": mrn_digest,
            "patient": to_checksum_address(patient),
            "issuedAt": issued_at,
            "nonce": nonce,
        },
    }


def sign_link(
    patient: LocalAccount, hospital: str, mrn: str, issuer: str = "", *, now: float | None = None
) -> SignedLink:
    """The patient signs a link to this hospital's record (MRN + issuer)."""
    issued_at = int(time.time() if now is None else now)
    nonce = secrets.randbits(128)
    digest = mrn_hash(mrn, issuer)
    typed = link_typed_data(hospital, digest, patient.address, issued_at, nonce)
    sig = patient.sign_message(encode_typed_data(full_message=typed))
    raw = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v])
    return SignedLink(hospital, digest, patient.address, issued_at, nonce, raw)


def parse_parameters(body: Any) -> SignedLink:
    """A signed link from the FHIR Parameters body; InvalidRequestError naming what is wrong."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidRequestError("the body must be a FHIR Parameters resource")
    values: dict[str, str] = {}
    for param in body.get("parameter") or []:
        if isinstance(param, dict) and isinstance(param.get("valueString"), str):
            values[str(param.get("name"))] = param["valueString"]
    missing = [
        n for n in ("hospital", "mrnHash", "address", "issuedAt", "nonce", "signature")
        if n not in values
    ]  # fmt: skip
    if missing:
        raise InvalidRequestError(f"Parameters lacks {', '.join(missing)} (valueString each)")
    if not is_address(values["address"]):
        raise InvalidRequestError("address is not an Ethereum address")
    try:
        digest = bytes.fromhex(values["mrnHash"].removeprefix("0x"))
        signature = bytes.fromhex(values["signature"].removeprefix("0x"))
        issued_at = int(values["issuedAt"])
        nonce = (
            int(values["nonce"], 16) if values["nonce"].startswith("0x") else int(values["nonce"])
        )
    except ValueError:
        raise InvalidRequestError(
            "mrnHash and signature must be hex, issuedAt a number of seconds, nonce a number"
        ) from None
    if len(digest) != 32 or len(signature) != 65:
        raise InvalidRequestError("mrnHash must be 32 bytes and signature 65 bytes")
    if not 0 <= issued_at < 2**64 or not 0 <= nonce < 2**256:
        raise InvalidRequestError("issuedAt or nonce is out of range")
    return SignedLink(
        values["hospital"],
        digest,
        to_checksum_address(values["address"]),
        issued_at,
        nonce,
        signature,
    )


def recover_link_signer(link: SignedLink) -> str | None:
    """The address that signed the link; None for a malformed or malleable (high-s) one."""
    r = int.from_bytes(link.signature[:32], "big")
    s = int.from_bytes(link.signature[32:64], "big")
    v = link.signature[64]
    if v in (0, 1):
        v += 27
    if v not in (27, 28) or s > SECP256K1_HALF_N:  # EIP-2: one valid signature per message
        return None
    try:
        signable = encode_typed_data(full_message=link.typed_data())
        return str(Account.recover_message(signable, vrs=(v, r, s)))
    except Exception:
        return None


def verify_link(
    link: SignedLink, hospital: str, mrn: str, issuer: str, *, now: float | None = None
) -> None:
    """Refuse a link not signed by its patient, not for this record, or not fresh."""
    if recover_link_signer(link) != link.patient:
        raise LinkSignatureError("the link signature was not made by the key of this address")
    if link.hospital != hospital:
        raise LinkSignatureError("the link was signed for another hospital")
    if link.mrn_hash != mrn_hash(mrn, issuer):
        raise LinkSignatureError("the link was signed for another patient record (MRN hash)")
    at = time.time() if now is None else now
    if link.issued_at > at + CLOCK_SKEW_SECONDS:
        raise LinkSignatureError("the link's issuedAt lies in the future")
    if link.issued_at < at - LINK_MAX_AGE_SECONDS:
        raise LinkReplayError(
            f"the link was signed more than {LINK_MAX_AGE_SECONDS // 3600} h ago: sign a new one"
        )


def store_link(engine: Engine, link: SignedLink, mrn: str, issuer: str) -> datetime:
    """Record a verified link in one transaction; refuse replays and double links."""
    now = datetime.now(UTC)
    nonce_hex = hex(link.nonce)
    sig_hex = "0x" + link.signature.hex()
    try:
        with engine.begin() as conn:
            used = conn.execute(
                select(LINK_T.c.link_key).where(
                    or_(
                        LINK_T.c.signature == sig_hex,
                        and_(LINK_T.c.address == link.patient, LINK_T.c.nonce == nonce_hex),
                    )
                )
            ).first()
            if used is not None:
                raise LinkReplayError("this link signature was already used (replay refused)")
            active = conn.execute(
                select(LINK_T.c.mrn, LINK_T.c.issuer).where(
                    LINK_T.c.address == link.patient, LINK_T.c.unlinked_at.is_(None)
                )
            ).first()
            if active is not None:
                same = (active.mrn, active.issuer) == (mrn, issuer)
                raise LinkReplayError(
                    "this address is already linked to this patient"
                    if same
                    else "this address is already linked to another patient at this node"
                )
            conn.execute(
                insert(LINK_T).values(
                    mrn=mrn,
                    issuer=issuer,
                    address=link.patient,
                    signature=sig_hex,
                    nonce=nonce_hex,
                    issued_at=link.issued_at,
                    linked_at=now,
                )
            )
    except IntegrityError:  # a concurrent submission of the same signature won the race
        raise LinkReplayError("this link signature was already used (replay refused)") from None
    return now


def unlink(engine: Engine, mrn: str, issuer: str, address: str) -> datetime:
    """End the active link of this record to this address (the row and signature stay)."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        done = conn.execute(
            update(LINK_T)
            .where(
                LINK_T.c.mrn == mrn,
                LINK_T.c.issuer == issuer,
                LINK_T.c.address == to_checksum_address(address),
                LINK_T.c.unlinked_at.is_(None),
            )
            .values(unlinked_at=now)
        )
    if not done.rowcount:
        raise NotFoundError("this patient has no active link to that address")
    return now


@dataclass(frozen=True)
class LinkedPatient:
    """An active link: the local record and the patient's address."""

    mrn: str
    issuer: str
    address: str


def active_links(
    conn: Connection, *, mrn: str | None = None, issuer: str | None = None
) -> list[LinkedPatient]:
    """Active links, all or for one record."""
    stmt = select(LINK_T.c.mrn, LINK_T.c.issuer, LINK_T.c.address).where(
        LINK_T.c.unlinked_at.is_(None)
    )
    if mrn is not None:
        stmt = stmt.where(LINK_T.c.mrn == mrn)
    if issuer is not None:
        stmt = stmt.where(LINK_T.c.issuer == issuer)
    rows = conn.execute(stmt.order_by(LINK_T.c.link_key)).all()
    return [LinkedPatient(r.mrn, r.issuer, r.address) for r in rows]


def linked_record(conn: Connection, address: str) -> LinkedPatient | None:
    """The local record an address is actively linked to (store_link allows at most one)."""
    row = conn.execute(
        select(LINK_T.c.mrn, LINK_T.c.issuer, LINK_T.c.address).where(
            LINK_T.c.address == to_checksum_address(address), LINK_T.c.unlinked_at.is_(None)
        )
    ).first()
    return None if row is None else LinkedPatient(row.mrn, row.issuer, row.address)
