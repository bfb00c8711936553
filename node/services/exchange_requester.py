"""The requester's side of the exchange: search the consortium, retrieve a study from its owner.

Search asks every active member but this node, in parallel over mutual TLS, each bounded by the
peer timeout, and merges the answers with their source; members that did not answer are named
with the reason (timeout, refused, unreachable, error). A slow member costs at most the timeout.

Retrieve decides consent here first (or records a break-glass on chain), records the access on
chain (`AuditAnchor.recordAccess`, where the contract fixes whether consent was in force at that
block), then pulls the study from its owner with a fresh transfer id and stores every instance
through the one ingest path, streaming, in a worker thread: memory holds one 256 KiB piece and
the headers of the few instances being stored, never the study. The provenance row says how the
transfer ended; a broken stream keeps the instances that arrived whole, marks the transfer
incomplete and answers 502; retrying is idempotent (the store accepts an identical instance
again without a second copy).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from anyio import to_thread

from ledger.anchor import AuditAnchorClient
from ledger.audit_events import Outcome
from ledger.audit_transfers import requester_event
from ledger.consent import Purpose, study_hash
from ledger.consortium import Member
from node.auth.policy import Principal
from node.dicom.multipart import related_boundary
from node.errors import InvalidRequestError, NotFoundError
from node.ledger_link import LedgerLink
from node.services.archive import Archive
from node.services.audit import Actor, NodeAudit
from node.services.consent_decisions import ConsentDecisions, Decision
from node.services.consent_errors import ledger_errors
from node.services.exchange import (
    BREAK_GLASS_HEADER,
    INSTANCES_HEADER,
    PATIENT_HEADER,
    PEER_STUDIES_PATH,
    PURPOSE_HEADER,
    TRANSFER_ID_HEADER,
    PeerTimeoutError,
    PeerUnreachableError,
    TransferBrokenError,
    TransferRefusedError,
    audit_purpose,
    consent_basis,
    is_address,
    new_transfer_id,
)
from node.services.multipart_ingest import ingest_multipart
from node.services.provenance import TransferStart, finish_transfer, start_transfer
from node.services.store import InstanceIngest, StoreFailure
from node.tls.contexts import client_context
from node.tls.peers import PeerDirectory

_ERROR_BODY_LIMIT: Final = 16 << 10
_COMMITS_IN_FLIGHT: Final = 2
_REASON_LIMIT: Final = 300


class PeerClient:
    """This node's client side of consortium mutual TLS (one ssl context for its lifetime)."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        ca_cert: Path,
        *,
        search_timeout: float,
        transfer_timeout: float,
    ) -> None:
        self.ssl: ssl.SSLContext = client_context(cert, key, ca_cert)
        self.search_timeout = search_timeout
        self.transfer_timeout = transfer_timeout

    def client(self, timeout: httpx.Timeout) -> httpx.AsyncClient:
        """An HTTP client presenting this node's certificate and trusting only the CA."""
        return httpx.AsyncClient(verify=self.ssl, timeout=timeout, follow_redirects=False)

    def transfer_client(self, timeout: httpx.Timeout) -> httpx.Client:
        """The same, blocking: a transfer's body is read, parsed and stored in a worker thread
        (read on the event loop, a study's body took 0.220 s against 0.116 s blocking:
        `benchmarks/peer_body_read.py --reads 5`, benchmarks/RESULTS.md)."""
        return httpx.Client(verify=self.ssl, timeout=timeout, follow_redirects=False)


@dataclass(frozen=True)
class Source:
    """A member as the answers name it."""

    account: str
    hospital_id: str
    endpoint: str

    @classmethod
    def of(cls, member: Member) -> Source:
        """The source description of a registry member."""
        return cls(member.account.lower(), member.hospital_id, member.endpoint.rstrip("/"))

    def as_json(self) -> dict[str, str]:
        """camelCase JSON."""
        return {"account": self.account, "hospitalId": self.hospital_id, "endpoint": self.endpoint}


@dataclass(frozen=True)
class RetrieveRequest:
    """A validated retrieve request."""

    study_uid: str
    patient: str  # address, lower case
    source: str  # the owner's member account, lower case
    purpose: Purpose
    break_glass_reason: int | None


def resolve_patient(archive: Archive, value: str) -> str:
    """A patient's address: given as one, or from a local Patient id through its signed link."""
    from node.fhir.patients import patient_mrn
    from node.services.patient_links import active_links

    value = (value or "").strip()
    if is_address(value):
        return value.lower()
    if not value or not value.isdigit() or len(value) > 18:
        raise InvalidRequestError("patient must be a local Patient id or an address (0x + 40 hex)")
    with archive.engine.connect() as conn:
        found = patient_mrn(conn, value)
        if found is None:
            raise NotFoundError("no local Patient with this id")
        links = active_links(conn, mrn=found[0], issuer=found[1])
    if not links:
        raise NotFoundError(
            "this patient has no network identity yet: link their address first "
            "(POST /fhir/Patient/{id}/$link with the patient's signature)"
        )
    return links[0].address.lower()


class ExchangeRequester:
    """Search and retrieve on behalf of this node's users."""

    def __init__(
        self,
        archive: Archive,
        audit: NodeAudit,
        link: LedgerLink,
        peers: PeerClient,
        directory: PeerDirectory,
    ) -> None:
        self.archive = archive
        self.audit = audit
        self.link = link
        self.peers = peers
        self.directory = directory

    @property
    def own_account(self) -> str:
        """This node's member account, lower case."""
        return self.link.account.lower()

    def other_members(self) -> list[Member]:
        """Active members but this node, from the peer directory (the registry is read again
        only when the chain head moved; may call the chain: call off the event loop)."""
        with ledger_errors():
            members = self.directory.active_members()
        return [m for m in members if m.account.lower() != self.own_account]

    # -- search ------------------------------------------------------------------------------

    async def search(self, patient: str, purpose: Purpose) -> dict[str, Any]:
        """Every member's covered studies of the patient, merged, with who did not answer."""
        members = await to_thread.run_sync(self.other_members)
        timeout = self.peers.search_timeout
        async with self.peers.client(httpx.Timeout(timeout)) as client:
            answers = await asyncio.gather(
                *(self._ask(client, m, patient, purpose, timeout) for m in members)
            )
        studies: list[dict[str, Any]] = []
        answered: list[dict[str, Any]] = []
        unanswered: list[dict[str, Any]] = []
        for member, answer in zip(members, answers, strict=True):
            source = Source.of(member)
            if isinstance(answer, _Unanswered):
                unanswered.append(
                    {**source.as_json(), "reason": answer.reason, "detail": answer.detail}
                )
                continue
            answered.append({**source.as_json(), "studies": len(answer)})
            studies += [{**item, "source": source.as_json()} for item in answer]
        return {
            "patient": patient,
            "purpose": purpose.label,
            "studies": studies,
            "answered": answered,
            "unanswered": unanswered,
        }

    async def _ask(
        self,
        client: httpx.AsyncClient,
        member: Member,
        patient: str,
        purpose: Purpose,
        timeout: float,
    ) -> list[dict[str, Any]] | _Unanswered:
        url = member.endpoint.rstrip("/") + PEER_STUDIES_PATH
        try:
            # The whole exchange, handshake included, within the timeout.
            async with asyncio.timeout(timeout):
                response = await client.get(
                    url, params={"patient": patient, "purpose": purpose.label}
                )
        except (TimeoutError, httpx.TimeoutException):
            return _Unanswered("timeout", f"no answer within {timeout:g} s")
        except httpx.ConnectError as exc:
            return _connect_failure(exc)
        except httpx.HTTPError as exc:
            return _Unanswered("error", f"the exchange failed ({type(exc).__name__})")
        if response.status_code in (401, 403):
            return _Unanswered("refused", _reason(response.content))
        if response.status_code != 200:
            return _Unanswered(
                "error", f"answered HTTP {response.status_code}: {_reason(response.content)}"
            )
        studies = _studies_of(response.content)
        if studies is None:
            return _Unanswered("error", "the answer is not a study list")
        return studies

    # -- retrieve ----------------------------------------------------------------------------

    async def retrieve(
        self, request: RetrieveRequest, principal: Principal, host: str | None
    ) -> dict[str, Any]:
        """Decide, record on chain, pull from the owner and store; the answer's JSON."""
        if request.purpose is not Purpose.TREATMENT:
            raise InvalidRequestError(
                "studies are transferred between hospitals for treatment only "
                "(research and AI training use de-identified data at its owner)"
            )
        if request.source == self.own_account:
            raise InvalidRequestError("the source is this node: the study is held here already")
        owner = await to_thread.run_sync(self._member, request.source)
        decision = await to_thread.run_sync(self._decide, request, principal)
        access_tx = await to_thread.run_sync(self._record_access, request, owner, decision)
        transfer = _Transfer(
            request=request,
            owner=owner,
            transfer_id=new_transfer_id(),
            consent_ref=decision.consent_ref,
            break_glass_tx=decision.tx_hash if decision.break_glass else None,
            access_tx=access_tx,
            user=self.audit.principal_actor(principal, host),
        )
        return await self._pull(transfer)

    def _member(self, account: str) -> Source:
        for member in self.other_members():
            if member.account.lower() == account:
                return Source.of(member)
        raise InvalidRequestError("source is not an active member of the consortium")

    def _decide(self, request: RetrieveRequest, principal: Principal) -> Decision:
        decisions = ConsentDecisions(self.link)
        if request.break_glass_reason is not None:
            # On chain before anything is asked of the owner: the patient and auditors see it.
            return decisions.break_glass(
                request.patient, request.study_uid, request.break_glass_reason, principal
            )
        # At the head: a grant made a moment ago is honoured, one revoked is not.
        decision = decisions.at_head().own_access(
            request.patient, request.purpose, request.study_uid
        )
        if not decision.permitted:
            raise TransferRefusedError(
                "no consent in force lets this hospital access this study for this purpose "
                "(a clinician may break the glass, giving a reason)"
            )
        return decision

    def _record_access(self, request: RetrieveRequest, owner: Source, decision: Decision) -> str:
        # The consentRef names the permitting grant; after a break-glass it is the
        # recordBreakGlass transaction's hash, which ties the access to that record.
        basis = decision.consent_ref or decision.tx_hash
        ref = bytes.fromhex(basis[2:]) if basis else bytes(32)
        anchor = AuditAnchorClient(self.link.chain, self.link.deployment)
        with ledger_errors():
            receipt = anchor.record_access(
                owner.account,
                request.patient,
                study_hash(request.study_uid),
                int(request.purpose),
                ref,
            )
        return receipt.tx_hash

    async def _pull(self, t: _Transfer) -> dict[str, Any]:
        request, owner = t.request, t.owner
        headers = {
            TRANSFER_ID_HEADER: t.transfer_id,
            PATIENT_HEADER: request.patient,
            PURPOSE_HEADER: request.purpose.label,
            "Accept": 'multipart/related; type="application/dicom"',
        }
        if t.break_glass_tx:
            headers[BREAK_GLASS_HEADER] = t.break_glass_tx
        url = f"{owner.endpoint}{PEER_STUDIES_PATH}/{request.study_uid}"
        timeout = httpx.Timeout(self.peers.transfer_timeout, connect=self.peers.search_timeout)
        progress = _Progress()
        # Until the owner answers with the study, no transfer began: the event says 12, and an
        # auditor does not look for the owner's (which may never have seen it); from then on 8.
        unserved = Outcome.MAJOR_FAILURE
        try:
            # The body is read, parsed and stored off the event loop (see transfer_client).
            with self.peers.transfer_client(timeout) as client:
                response = await to_thread.run_sync(_open, client, url, headers)
                with closing(response):
                    if response.status_code != 200:
                        reason = _reason(await to_thread.run_sync(_bounded_body, response))
                        refused = response.status_code in (401, 403)
                        await self._audit(t, Outcome.MINOR_FAILURE if refused else unserved)
                        if refused:
                            raise TransferRefusedError(f"{owner.hospital_id} refused: {reason}")
                        raise PeerUnreachableError(
                            f"{owner.hospital_id} answered HTTP {response.status_code}: {reason}"
                        )
                    unserved = Outcome.SERIOUS_FAILURE
                    boundary = related_boundary(response.headers.get("content-type"))
                    if boundary is None:
                        await self._audit(t, Outcome.SERIOUS_FAILURE)
                        raise PeerUnreachableError(
                            f"{owner.hospital_id} did not answer with multipart/related DICOM"
                        )
                    progress.expected = _count(response.headers.get(INSTANCES_HEADER))
                    await to_thread.run_sync(start_transfer, self.archive.engine, t.start(progress))
                    progress.started = True
                    await to_thread.run_sync(
                        self._receive, response, boundary, request.study_uid, progress
                    )
        except (TimeoutError, httpx.TimeoutException) as exc:
            if not progress.started:
                await self._audit(t, unserved)
                raise PeerTimeoutError(
                    f"{owner.hospital_id} did not answer within {self.peers.search_timeout:g} s"
                ) from exc
            progress.broken = f"{owner.hospital_id} stopped sending (timeout)"
        except httpx.ConnectError as exc:
            await self._audit(t, unserved)
            failure = _connect_failure(exc)
            raise PeerUnreachableError(f"{owner.hospital_id}: {failure.detail}") from exc
        except (httpx.HTTPError, InvalidRequestError) as exc:
            if not progress.started:
                await self._audit(t, unserved)
                raise PeerUnreachableError(
                    f"{owner.hospital_id}: the exchange failed ({type(exc).__name__})"
                ) from exc
            progress.broken = f"the stream from {owner.hospital_id} broke off"
        except Exception:
            if progress.started:
                # This node failed to store (disk, keys): the transfer ends here, recorded as
                # incomplete with what arrived, and the node's own error is the answer.
                await to_thread.run_sync(
                    finish_transfer, self.archive.engine, t.transfer_id, progress.received, False
                )
                await self._audit(t, Outcome.SERIOUS_FAILURE)
            elif not t.audited:
                # This node failed before the transfer began (recording it): still one event,
                # saying how far the owner got.
                await self._audit(t, unserved)
            raise
        return await self._finish(t, progress)

    def _receive(
        self, response: httpx.Response, boundary: bytes, study_uid: str, progress: _Progress
    ) -> None:
        """Read the study's body, parse it and store every instance (runs in a worker thread)."""
        with _Commits(progress) as commits:
            ingest_multipart(
                self.archive,
                response.iter_raw(),
                boundary,
                study_uid,
                commits.submit,
                match_orders=False,
            )
            commits.drain()
            progress.closed = True

    async def _finish(self, t: _Transfer, progress: _Progress) -> dict[str, Any]:
        complete = progress.complete
        await to_thread.run_sync(
            finish_transfer, self.archive.engine, t.transfer_id, progress.received, complete
        )
        await self._audit(t, Outcome.SUCCESS if complete else Outcome.SERIOUS_FAILURE)
        body = t.answer(progress)
        if not complete:
            of = "" if progress.expected is None else f" of {progress.expected}"
            why = progress.broken or (
                f"{len(progress.refused)} instance(s) could not be stored: {progress.refused[0]}"
                if progress.refused
                else "fewer instances arrived than announced"
            )
            raise TransferBrokenError(
                f"transfer incomplete: {why}; {progress.received}{of} instances arrived and are "
                "stored; retry to complete it",
                body,
            )
        return body

    async def _audit(self, t: _Transfer, outcome: Outcome) -> None:
        event = requester_event(
            source=self.audit.source,
            user=t.user.agent(),
            owner=t.owner.account,
            requester=self.own_account,
            patient=t.request.patient,
            study_uid=t.request.study_uid,
            transfer_id=t.transfer_id,
            consent=consent_basis(t.consent_ref, t.break_glass_tx),
            purpose=audit_purpose(t.request.purpose),
            outcome=outcome,
        )
        await self.audit.record_async(event)
        t.audited = True


class _Commits:
    """Makes received instances durable on threads of their own while the next ones arrive.

    Storing ends in fsyncs (blob, directory) and an index commit, which wait on the disk:
    reading, parsing and encrypting the next instance overlaps that wait with the network, and
    with two commits in flight one instance's blob fsyncs overlap the other's index commit. An
    instance counts as received once its commit returned; leaving the context waits for all.
    """

    def __init__(self, progress: _Progress, depth: int = _COMMITS_IN_FLIGHT) -> None:
        self._progress = progress
        self._depth = depth
        self._pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="transfer-commit")
        self._pending: deque[Future[Any]] = deque()

    def __enter__(self) -> _Commits:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown()

    def submit(self, ingest: InstanceIngest) -> None:
        """Commit this instance, once fewer than `depth` commits are in flight."""
        while len(self._pending) >= self._depth:
            self._settle(self._pending.popleft())
        self._pending.append(self._pool.submit(ingest.finish))

    def drain(self) -> None:
        """Wait for every commit in flight; the first node error is raised after all ended."""
        error: BaseException | None = None
        while self._pending:
            try:
                self._settle(self._pending.popleft())
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    def _settle(self, pending: Future[Any]) -> None:
        try:
            pending.result()
            self._progress.received += 1
        except StoreFailure as failure:
            self._progress.refused.append(failure.reason)


@dataclass
class _Progress:
    expected: int | None = None
    received: int = 0
    started: bool = False
    closed: bool = False
    broken: str | None = None
    refused: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return (
            self.closed
            and not self.refused
            and self.broken is None
            and (self.expected is None or self.received == self.expected)
        )


@dataclass
class _Transfer:
    request: RetrieveRequest
    owner: Source
    transfer_id: str
    consent_ref: str | None
    break_glass_tx: str | None
    access_tx: str
    user: Actor
    audited: bool = False  # this side's event is recorded (exactly one per transfer)

    def start(self, progress: _Progress) -> TransferStart:
        return TransferStart(
            transfer_id=self.transfer_id,
            study_uid=self.request.study_uid,
            source_account=self.owner.account,
            source_hospital=self.owner.hospital_id,
            source_endpoint=self.owner.endpoint,
            purpose=self.request.purpose.label,
            consent_ref=self.consent_ref,
            break_glass_tx=self.break_glass_tx,
            access_tx=self.access_tx,
            instances_expected=progress.expected,
        )

    def answer(self, progress: _Progress) -> dict[str, Any]:
        return {
            "transferId": self.transfer_id,
            "studyInstanceUID": self.request.study_uid,
            "instances": progress.received,
            "instancesExpected": progress.expected,
            "complete": progress.complete,
            "consentRef": self.consent_ref,
            "breakGlassTx": self.break_glass_tx,
            "accessTx": self.access_tx,
            "purpose": self.request.purpose.label,
            "source": self.owner.as_json(),
        }


@dataclass(frozen=True)
class _Unanswered:
    reason: str  # timeout | refused | unreachable | error
    detail: str


def _connect_failure(exc: httpx.ConnectError) -> _Unanswered:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            # The member's certificate did not verify, or it refused ours at the handshake.
            return _Unanswered("refused", f"the TLS handshake failed ({cause.reason or 'ssl'})")
        cause = cause.__cause__ or cause.__context__
    return _Unanswered("unreachable", "cannot connect to its endpoint")


def _reason(body: bytes) -> str:
    """The error a peer gave (its JSON `error`), shortened; never raw bytes."""
    try:
        value = json.loads(body)
        text = str(value.get("error")) if isinstance(value, dict) else ""
    except (ValueError, UnicodeDecodeError):
        text = ""
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:_REASON_LIMIT] or "no reason given"


def _studies_of(body: bytes) -> list[dict[str, Any]] | None:
    """The studies of a peer's answer, checked for shape; None when malformed."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("studies"), list):
        return None
    out: list[dict[str, Any]] = []
    for item in value["studies"]:
        if not isinstance(item, dict) or not isinstance(item.get("study"), dict):
            return None
        ref = item.get("consentRef")
        if ref is not None and not isinstance(ref, str):
            return None
        out.append({"study": item["study"], "consentRef": ref})
    return out


def _count(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


def _open(client: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
    """Send the transfer request; the response's body is left to read."""
    return client.send(client.build_request("GET", url, headers=headers), stream=True)


def _bounded_body(response: httpx.Response) -> bytes:
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > _ERROR_BODY_LIMIT:
            break
    return bytes(body[:_ERROR_BODY_LIMIT])
