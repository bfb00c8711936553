"""Patient consent: EIP-712 signing and verification, the ConsentRegistry client, and the cache.

A consent check on the request path is a lookup in ConsentCache: an in-memory index kept
current from GrantSet/GrantRevoked/MemberAdded/MemberRemoved events, with no RPC per check.
Its staleness (last synced block, age of the last sync) is reported with every decision, and a
check refuses to answer when the cache is older than its bound.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ledger.chain import Chain
from ledger.deploy import Deployment, checksum, contract
from ledger.errors import ConfigurationError, LedgerError

ALL_MEMBERS = "0x" + "00" * 20
ALL_STUDIES = b"\x00" * 32
# EIP-2: signatures with s above half the curve order are malleable and rejected on chain.
SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
DOMAIN_NAME = "pacsmesh ConsentRegistry"
DOMAIN_VERSION = "1"


class Purpose(IntEnum):
    """Why a grantee may access the data (matches the contract's purpose codes)."""

    TREATMENT = 0
    RESEARCH = 1
    AI_TRAINING = 2

    @property
    def label(self) -> str:
        """The CLI spelling: treatment, research, ai-training."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, text: str) -> Purpose:
        """Parse the CLI spelling."""
        try:
            return cls[text.strip().upper().replace("-", "_")]
        except KeyError:
            raise ConfigurationError(
                f"unknown purpose {text!r}: use treatment, research or ai-training"
            ) from None


def consent_ref(patient: str, grantee: str, purpose: Purpose | int, study: bytes) -> bytes:
    """The contract's key of a grant (keccak256(abi.encode(...))): a recordAccess consentRef.

    Every argument of abi.encode(address, address, uint8, bytes32) is one left-padded 32-byte
    word (Solidity ABI spec, "Formal Specification of the Encoding"), so the words are built
    directly: it is on the decision path, where eth-abi and checksumming cost ten times more.
    """
    words = (
        bytes(12) + bytes.fromhex(patient.removeprefix("0x"))
        + bytes(12) + bytes.fromhex(grantee.removeprefix("0x"))
        + int(purpose).to_bytes(32, "big")
        + bytes(study)
    )  # fmt: skip
    return keccak(words)


def study_hash(study_uid: str | None) -> bytes:
    """The on-chain key of a study: keccak256 of its Study Instance UID (zero: all studies)."""
    if not study_uid:
        return ALL_STUDIES
    return keccak(text=study_uid.strip())


class ConsentCacheStaleError(LedgerError):
    """The consent cache has not synced within its staleness bound; no decision is given."""

    http_status = 503
    fhir_code = "transient"


# -- EIP-712 ----------------------------------------------------------------------------------

_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_GRANT_TYPE = [
    {"name": "patient", "type": "address"},
    {"name": "grantee", "type": "address"},
    {"name": "purpose", "type": "uint8"},
    {"name": "studyHash", "type": "bytes32"},
    {"name": "validFrom", "type": "uint64"},
    {"name": "expiresAt", "type": "uint64"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]
_REVOKE_TYPE = [
    {"name": "patient", "type": "address"},
    {"name": "grantee", "type": "address"},
    {"name": "purpose", "type": "uint8"},
    {"name": "studyHash", "type": "bytes32"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]


@dataclass(frozen=True)
class ConsentRequest:
    """A grant (or, with revoke=True, a revocation) as the patient signs it."""

    patient: str
    grantee: str
    purpose: Purpose
    study_hash: bytes
    nonce: int
    deadline: int
    valid_from: int = 0
    expires_at: int = 0
    revoke: bool = False

    def typed_data(self, chain_id: int, verifying_contract: str) -> dict[str, Any]:
        """The EIP-712 message (domain bound to chain id and contract address)."""
        message: dict[str, Any] = {
            "patient": checksum(self.patient),
            "grantee": checksum(self.grantee),
            "purpose": int(self.purpose),
            "studyHash": self.study_hash,
            "nonce": self.nonce,
            "deadline": self.deadline,
        }
        if not self.revoke:
            message["validFrom"] = self.valid_from
            message["expiresAt"] = self.expires_at
        primary = "Revoke" if self.revoke else "Grant"
        return {
            "types": {
                "EIP712Domain": _DOMAIN_TYPE,
                primary: _REVOKE_TYPE if self.revoke else _GRANT_TYPE,
            },
            "primaryType": primary,
            "domain": {
                "name": DOMAIN_NAME,
                "version": DOMAIN_VERSION,
                "chainId": chain_id,
                "verifyingContract": checksum(verifying_contract),
            },
            "message": message,
        }


@dataclass(frozen=True)
class SignedConsent:
    """A patient's signed request, ready for any member to relay."""

    request: ConsentRequest
    v: int
    r: bytes
    s: bytes


def sign_consent(
    patient: LocalAccount, request: ConsentRequest, chain_id: int, verifying_contract: str
) -> SignedConsent:
    """Sign a grant or revocation as the patient (EIP-712)."""
    if checksum(request.patient) != patient.address:
        raise ConfigurationError("the request's patient is not the signing key's address")
    signable = encode_typed_data(full_message=request.typed_data(chain_id, verifying_contract))
    sig = patient.sign_message(signable)
    return SignedConsent(
        request=request, v=int(sig.v), r=sig.r.to_bytes(32, "big"), s=sig.s.to_bytes(32, "big")
    )


def recover_signer(signed: SignedConsent, chain_id: int, verifying_contract: str) -> str | None:
    """The address that signed, as the contract would recover it; None when malformed/high-s."""
    if int.from_bytes(signed.s, "big") > SECP256K1_HALF_N or signed.v not in (27, 28):
        return None
    signable = encode_typed_data(
        full_message=signed.request.typed_data(chain_id, verifying_contract)
    )
    try:
        return str(
            Account.recover_message(
                signable, vrs=(signed.v, int.from_bytes(signed.r), int.from_bytes(signed.s))
            )
        )
    except Exception:
        return None


def verify_consent(signed: SignedConsent, chain_id: int, verifying_contract: str) -> bool:
    """Whether the signature is the patient's own, for this chain and contract."""
    signer = recover_signer(signed, chain_id, verifying_contract)
    return signer is not None and signer == checksum(signed.request.patient)


# -- on-chain client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """A grant as stored on chain."""

    patient: str
    grantee: str
    purpose: Purpose
    study_hash: bytes
    valid_from: int
    expires_at: int

    def in_force(self, now: float) -> bool:
        """Whether the grant applies at this Unix time."""
        return self.valid_from <= now and (self.expires_at == 0 or now < self.expires_at)

    def to_json(self) -> dict[str, Any]:
        """JSON form for the CLI."""
        return {
            "patient": self.patient,
            "grantee": "all" if self.grantee == ALL_MEMBERS else self.grantee,
            "purpose": self.purpose.label,
            "study_hash": "all" if self.study_hash == ALL_STUDIES else "0x" + self.study_hash.hex(),
            "valid_from": self.valid_from,
            "expires_at": self.expires_at or None,
        }


@dataclass(frozen=True)
class GrantState:
    """A grant the chain has seen: current (in force, pending or expired) or revoked."""

    grant: Grant
    revoked: bool

    @property
    def ref(self) -> bytes:
        """The contract's key of this grant (its consentRef)."""
        g = self.grant
        return consent_ref(g.patient, g.grantee, g.purpose, g.study_hash)


class ConsentClient:
    """Typed access to the ConsentRegistry contract."""

    def __init__(self, chain: Chain, deployment: Deployment) -> None:
        self.chain = chain
        self.deployment = deployment
        self.contract = contract(chain, "ConsentRegistry", deployment.consent_registry)

    def nonce(self, patient: str) -> int:
        """The patient's next signature nonce."""
        return int(self.chain.call(self.contract.functions.nonces(checksum(patient))))

    def request(
        self,
        patient: str,
        grantee: str,
        purpose: Purpose,
        study: bytes = ALL_STUDIES,
        *,
        valid_from: int = 0,
        expires_at: int = 0,
        revoke: bool = False,
        deadline_seconds: int = 3600,
    ) -> ConsentRequest:
        """A request carrying the patient's current nonce and a deadline from the chain's clock."""
        return ConsentRequest(
            patient=checksum(patient),
            grantee=checksum(grantee),
            purpose=purpose,
            study_hash=study,
            nonce=self.nonce(patient),
            deadline=self.chain.block_timestamp() + deadline_seconds,
            valid_from=valid_from,
            expires_at=expires_at,
            revoke=revoke,
        )

    def sign(self, patient: LocalAccount, request: ConsentRequest) -> SignedConsent:
        """Sign a request for this deployment's chain and contract."""
        return sign_consent(patient, request, self.chain.chain_id, self.deployment.consent_registry)

    def relay(self, signed: SignedConsent) -> str:
        """Submit a patient-signed grant or revocation from this node; returns the tx hash."""
        q = signed.request
        if q.revoke:
            fn = self.contract.functions.revokeBySig(
                q.patient, q.grantee, int(q.purpose), q.study_hash, q.nonce, q.deadline,
                signed.v, signed.r, signed.s,
            )  # fmt: skip
        else:
            fn = self.contract.functions.grantBySig(
                q.patient, q.grantee, int(q.purpose), q.study_hash, q.valid_from, q.expires_at,
                q.nonce, q.deadline, signed.v, signed.r, signed.s,
            )  # fmt: skip
        return "0x" + bytes(self.chain.transact(fn)["transactionHash"]).hex()

    def grant_direct(
        self,
        grantee: str,
        purpose: Purpose,
        study: bytes = ALL_STUDIES,
        valid_from: int = 0,
        expires_at: int = 0,
    ) -> str:
        """Grant from the connected account itself (the patient pays gas); returns the tx hash."""
        fn = self.contract.functions.grant(
            checksum(grantee), int(purpose), study, valid_from, expires_at
        )
        return "0x" + bytes(self.chain.transact(fn)["transactionHash"]).hex()

    def revoke_direct(self, grantee: str, purpose: Purpose, study: bytes = ALL_STUDIES) -> str:
        """Revoke from the connected account itself; returns the tx hash."""
        fn = self.contract.functions.revoke(checksum(grantee), int(purpose), study)
        return "0x" + bytes(self.chain.transact(fn)["transactionHash"]).hex()

    def record_break_glass(self, patient: str, study: bytes, reason_code: int) -> str:
        """Record an emergency access by this node; returns the tx hash."""
        fn = self.contract.functions.recordBreakGlass(checksum(patient), study, reason_code)
        return "0x" + bytes(self.chain.transact(fn)["transactionHash"]).hex()

    def is_permitted(
        self, patient: str, grantee: str, purpose: Purpose, study: bytes = ALL_STUDIES
    ) -> bool:
        """The contract's own answer at the current block (one RPC; the cache avoids it)."""
        fn = self.contract.functions.isPermitted(
            checksum(patient), checksum(grantee), int(purpose), study
        )
        return bool(self.chain.call(fn))

    def grant_of(
        self, patient: str, grantee: str, purpose: Purpose, study: bytes = ALL_STUDIES
    ) -> Grant | None:
        """The stored grant for exactly this key, or None."""
        fn = self.contract.functions.getGrant(
            checksum(patient), checksum(grantee), int(purpose), study
        )
        valid_from, expires_at, active = self.chain.call(fn)
        if not active:
            return None
        return Grant(
            checksum(patient), checksum(grantee), purpose, study, int(valid_from), int(expires_at)
        )


# -- cache -------------------------------------------------------------------------------------

GrantKey = tuple[str, str, int, bytes]


@dataclass(frozen=True)
class ConsentDecision:
    """A cache answer with the staleness it was given under, naming the permitting grant."""

    permitted: bool
    synced_block: int
    age_seconds: float
    consent_ref: bytes | None = None  # the contract's key of the grant that permits

    def to_json(self) -> dict[str, Any]:
        """JSON form for the CLI."""
        return {
            "permitted": self.permitted,
            "synced_block": self.synced_block,
            "age_seconds": round(self.age_seconds, 3),
        }


class ConsentCache:
    """In-memory consent index kept current from contract events."""

    def __init__(
        self,
        chain: Chain | None,
        deployment: Deployment | None,
        *,
        max_age_seconds: float = 30.0,
    ) -> None:
        self.chain = chain
        self.deployment = deployment
        self.max_age_seconds = max_age_seconds
        self._grants: dict[GrantKey, tuple[int, int]] = {}
        # Revoked grants keep their window, so a patient's history shows them (FHIR Consent
        # status inactive); a later GrantSet of the same key replaces the revocation.
        self._revoked: dict[GrantKey, tuple[int, int]] = {}
        self._active_members: set[str] = set()
        self._synced_block = -1
        self._synced_at = 0.0
        self._synced_block_time = 0
        self._synced_hash = b""
        self.rebuilds = 0
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if chain is not None and deployment is not None:
            consent = contract(chain, "ConsentRegistry", deployment.consent_registry)
            registry = contract(chain, "ConsortiumRegistry", deployment.consortium_registry)
            self._events = {
                bytes.fromhex(str(e.topic).removeprefix("0x")): e
                for e in (
                    consent.events.GrantSet(),
                    consent.events.GrantRevoked(),
                    registry.events.MemberAdded(),
                    registry.events.MemberRemoved(),
                )
            }

    # State changes, applied in chain order.
    def apply_grant(
        self,
        patient: str,
        grantee: str,
        purpose: int,
        study: bytes,
        valid_from: int,
        expires_at: int,
    ) -> None:
        """Record a GrantSet."""
        key = (patient.lower(), grantee.lower(), purpose, bytes(study))
        self._revoked.pop(key, None)
        self._grants[key] = (valid_from, expires_at)

    def apply_revoke(self, patient: str, grantee: str, purpose: int, study: bytes) -> None:
        """Record a GrantRevoked."""
        key = (patient.lower(), grantee.lower(), purpose, bytes(study))
        window = self._grants.pop(key, None)
        if window is not None:
            self._revoked[key] = window

    def apply_member(self, account: str, active: bool) -> None:
        """Record a MemberAdded or MemberRemoved."""
        if active:
            self._active_members.add(account.lower())
        else:
            self._active_members.discard(account.lower())

    def mark_synced(self, block: int, at: float | None = None, block_time: int = 0) -> None:
        """Note that every event up to this block (with this timestamp) has been applied."""
        self._synced_block = block
        self._synced_at = time.time() if at is None else at
        self._synced_block_time = block_time

    def __len__(self) -> int:
        return len(self._grants)

    def sync(self) -> int:
        """Apply events up to the confirmed block; returns the block synced to."""
        if self.chain is None or self.deployment is None:
            raise ConfigurationError("this cache has no chain to sync from")
        with self._sync_lock:  # one sync at a time: the background thread and callers
            return self._sync(self.chain, self.deployment)

    def sync_to_head(self) -> int:
        """Catch up with the chain's confirmed head now, if a block came since the last sync.

        For answers that must count the latest block (cross-hospital access is judged at the
        current block: a revocation mined a moment ago refuses the next request), not the last
        background sync. One RPC when the cache is at the head already; a sync when it is not.
        """
        if self.chain is None or self.deployment is None:
            raise ConfigurationError("this cache has no chain to sync from")
        if self.chain.confirmed_block() == self._synced_block:
            return self._synced_block
        return self.sync()

    def _sync(self, chain: Chain, deployment: Deployment) -> int:
        target = chain.confirmed_block()
        target_hash, block_time = chain.block_info(target)
        # A reorg that replaced the block we synced to may have dropped events we applied:
        # rebuild from the deployment block rather than keep a grant the chain no longer has.
        rebuild = self._synced_block >= 0 and (
            target < self._synced_block
            or chain.block_info(self._synced_block)[0] != self._synced_hash
        )
        fresh = self._synced_block < 0 or rebuild
        start = deployment.block_number if fresh else self._synced_block + 1
        logs = []
        if start <= target:
            logs = chain.get_logs(
                [deployment.consent_registry, deployment.consortium_registry],
                start,
                target,
                topics=[list(self._events)],
            )
        with self._lock:
            if rebuild:
                self.rebuilds += 1
                self._grants.clear()
                self._revoked.clear()
                self._active_members.clear()
            for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                event = self._events.get(bytes(log["topics"][0]))
                if event is None:
                    continue
                decoded = event.process_log(log)
                args = decoded["args"]
                name = decoded["event"]
                if name == "GrantSet":
                    self.apply_grant(
                        args["patient"], args["grantee"], int(args["purpose"]),
                        args["studyHash"], int(args["validFrom"]), int(args["expiresAt"]),
                    )  # fmt: skip
                elif name == "GrantRevoked":
                    self.apply_revoke(
                        args["patient"], args["grantee"], int(args["purpose"]), args["studyHash"]
                    )
                elif name == "MemberAdded":
                    self.apply_member(args["account"], True)
                elif name == "MemberRemoved":
                    self.apply_member(args["account"], False)
            self.mark_synced(target, block_time=block_time)
            self._synced_hash = target_hash
        return target

    def _in_force(self, key: GrantKey, now: float) -> bool:
        window = self._grants.get(key)
        if window is None:
            return False
        valid_from, expires_at = window
        return valid_from <= now and (expires_at == 0 or now < expires_at)

    def check(
        self,
        patient: str,
        grantee: str,
        purpose: Purpose | int,
        study: bytes = ALL_STUDIES,
        *,
        now: float | None = None,
    ) -> ConsentDecision:
        """Whether the access is permitted now, from memory; refuses when too stale."""
        p = int(purpose)
        # Keys are lower-case hex: a lookup costs no keccak for checksumming.
        patient, grantee = patient.lower(), grantee.lower()
        # The lock keeps a check from seeing half of a sync (a grant applied, its later
        # revocation not yet); uncontended it costs well under a microsecond.
        with self._lock:
            age = self._fresh_age()
            # The chain's clock may run ahead of ours (dev chains mine faster than one block a
            # second); the contract judges at block time, so never judge earlier than that.
            at = max(time.time(), self._synced_block_time) if now is None else now
            if grantee in self._active_members:
                # The contract's order: the member's own grant before one to every member,
                # one study before all studies.
                for who, scope in (
                    (grantee, study),
                    (grantee, ALL_STUDIES),
                    (ALL_MEMBERS, study),
                    (ALL_MEMBERS, ALL_STUDIES),
                ):
                    if self._in_force((patient, who, p, scope), at):
                        ref = consent_ref(patient, who, p, scope)
                        return ConsentDecision(True, self._synced_block, age, ref)
            return ConsentDecision(False, self._synced_block, age)

    def _fresh_age(self) -> float:
        """Seconds since the last sync; refuses (stale) past the bound. Call under the lock."""
        age = time.time() - self._synced_at
        if self._synced_block < 0 or age > self.max_age_seconds:
            raise ConsentCacheStaleError(
                f"consent cache last synced {age:.1f}s ago (bound {self.max_age_seconds}s)"
            )
        return age

    def require_fresh(self) -> None:
        """Refuse to answer from a cache older than its staleness bound."""
        with self._lock:
            self._fresh_age()

    @property
    def synced_block(self) -> int:
        """The block every event has been applied up to (-1 before the first sync)."""
        return self._synced_block

    @property
    def synced_block_time(self) -> int:
        """The timestamp of the block synced to (the chain's clock for in-force judgements)."""
        return self._synced_block_time

    def states_of(self, patient: str) -> list[GrantState]:
        """Every grant of a patient the chain has seen: current ones, then revoked ones."""
        low = patient.lower()
        with self._lock:
            revoked = sorted((k, v) for k, v in self._revoked.items() if k[0] == low)
        current = [GrantState(g, False) for g in self.grants_of(patient)]
        return current + [
            GrantState(Grant(checksum(k[0]), checksum(k[1]), Purpose(k[2]), k[3], *window), True)
            for k, window in revoked
        ]

    def grants_of(self, patient: str) -> list[Grant]:
        """Every active grant of a patient (any validity window)."""
        patient = checksum(patient).lower()
        with self._lock:
            items = [(k, v) for k, v in self._grants.items() if k[0] == patient]
        return [
            Grant(checksum(k[0]), checksum(k[1]), Purpose(k[2]), k[3], v[0], v[1])
            for k, v in sorted(items, key=lambda kv: (kv[0][2], kv[0][1], kv[0][3]))
        ]

    def start(self, interval: float = 2.0) -> None:
        """Keep syncing in a background thread; sync errors leave the cache to age visibly."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                # An outage is not hidden: the age bound makes it visible to every check.
                with contextlib.suppress(LedgerError):
                    self.sync()
                self._stop.wait(interval)

        self._thread = threading.Thread(target=loop, name="consent-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background sync."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
