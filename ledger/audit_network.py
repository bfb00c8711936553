"""`pacsmesh audit verify --node URL…`: verify several nodes' audit logs against the chain.

For each node given:

1. **Who it is.** The node names its member account in its public CapabilityStatement
   (``ledger/audit_wire.py``); the consortium registry must hold that account with this URL as
   its endpoint. Without a claim, the one member registered at this URL is taken. An auditor
   who reaches a node at another address pins it with ``--member URL=ACCOUNT``. Anything else
   (a claim the registry contradicts, no member at the URL) makes the node unreadable: whose
   anchors to check would be a guess.
2. **Its log.** The chain's head block is noted; then every entry up to the node's stated size
   (or the largest size anchored by then, if that is more) is read with an auditor's token and
   checked against every anchor of the member (``ledger/audit_check.py``).
3. **Across nodes.** Transfer events are paired between the nodes, and each access is checked
   against the consent and break-glass records on chain (``ledger/audit_transfers.py``).

Exit status: 0 clean, 1 findings, 2 a node could not be read (the others are still checked and
reported) or bad input.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ledger.anchor import AuditAnchorClient
from ledger.audit_check import ChainAnchor, check_log
from ledger.audit_events import AuditEvent, AuditEventError
from ledger.audit_remote import NodeReader, NodeUnreadableError, normalize_url
from ledger.audit_report import NodeReport, Report
from ledger.audit_transfers import ChainRecords, TransferSide, check_transfers, transfer_side
from ledger.chain import Chain
from ledger.consortium import ConsortiumClient, Member
from ledger.deploy import Deployment

TOKEN_SUFFIX = ".token"


class AuditInputError(ValueError):
    """Bad command-line input (a token file that cannot be read, a malformed pair)."""


def _split_pair(value: str) -> tuple[str, str] | None:
    """``URL=VALUE`` as (normalized URL, VALUE), or None when the text is no such pair."""
    left, sep, right = value.partition("=")
    if not sep or "://" not in left:
        return None
    try:
        return normalize_url(left), right
    except ValueError:
        return None


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise AuditInputError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise AuditInputError(f"token file {path} is empty")
    return token


@dataclass
class TokenSources:
    """Where each node's auditor token comes from (``--token-file``, repeatable).

    ``URL=FILE`` gives one node's token; a directory holds one file per node, named
    ``<hospital id>.token`` or ``<host>_<port>.token``; a plain file is the token for every
    node without its own (a consortium-wide OIDC issuer's token, or a single node).
    """

    per_url: dict[str, Path] = field(default_factory=dict)
    directory: Path | None = None
    default: Path | None = None

    @classmethod
    def parse(cls, values: Sequence[str]) -> TokenSources:
        """Parse the --token-file values; AuditInputError for anything unusable."""
        sources = cls()
        for value in values:
            pair = _split_pair(value)
            if pair is not None:
                url, file = pair
                if url in sources.per_url:
                    raise AuditInputError(f"two --token-file values for {url}")
                sources.per_url[url] = Path(file)
                _read_token(Path(file))
                continue
            path = Path(value)
            if path.is_dir():
                if sources.directory is not None:
                    raise AuditInputError("give at most one --token-file directory")
                sources.directory = path
            elif path.is_file():
                if sources.default is not None:
                    raise AuditInputError(
                        "give at most one plain --token-file; use URL=FILE for each node"
                    )
                _read_token(path)
                sources.default = path
            else:
                raise AuditInputError(
                    f"--token-file {value!r} is neither URL=FILE, a directory nor a file"
                )
        return sources

    def token_for(self, url: str, hospital_id: str | None) -> str | None:
        """The token for this node, or None when no source was given at all."""
        if url in self.per_url:
            return _read_token(self.per_url[url])
        if self.directory is not None:
            parts = urlsplit(url)
            names = [f"{hospital_id}{TOKEN_SUFFIX}"] if hospital_id else []
            names.append(f"{parts.hostname}_{parts.port or ''}{TOKEN_SUFFIX}".replace("_.", "."))
            for name in names:
                if (self.directory / name).is_file():
                    return _read_token(self.directory / name)
            if self.default is None:
                raise NodeUnreadableError(
                    f"no token for {url} in {self.directory} (looked for {', '.join(names)})"
                )
        if self.default is not None:
            return _read_token(self.default)
        return None


def parse_pins(values: Sequence[str]) -> dict[str, str]:
    """``--member URL=ACCOUNT`` values as {normalized URL: account (lower case)}."""
    pins: dict[str, str] = {}
    for value in values:
        pair = _split_pair(value)
        account = pair[1].strip().lower() if pair else ""
        if pair is None or len(account) != 42 or not account.startswith("0x"):
            raise AuditInputError(f"--member {value!r} must be URL=0x<40 hex digits>")
        try:
            int(account, 16)
        except ValueError:
            raise AuditInputError(f"--member {value!r} must be URL=0x<40 hex digits>") from None
        pins[pair[0]] = account
    return pins


def _endpoint(member: Member) -> str | None:
    try:
        return normalize_url(member.endpoint)
    except ValueError:
        return None


def resolve_member(
    url: str, claim: str | None, pinned: str | None, members: Sequence[Member]
) -> Member:
    """The consortium member a node at ``url`` is (NodeUnreadableError when it cannot be told)."""
    by_account = {m.account.lower(): m for m in members}
    if pinned is not None:
        member = by_account.get(pinned)
        if member is None:
            raise NodeUnreadableError(f"the pinned account {pinned} is no consortium member")
        if claim is not None and claim != pinned:
            raise NodeUnreadableError(
                f"the node names member {claim}, not the pinned account {pinned}"
            )
        return member
    if claim is not None:
        member = by_account.get(claim)
        if member is None:
            raise NodeUnreadableError(
                f"the node names member {claim}, which the consortium registry does not know"
            )
        if _endpoint(member) != url:
            raise NodeUnreadableError(
                f"the node names member {claim}, whose registered endpoint is "
                f"{member.endpoint!r}, not {url} (pin it with --member URL=ACCOUNT if this "
                "is the same node at another address)"
            )
        return member
    at_url = [m for m in members if _endpoint(m) == url]
    if len(at_url) == 1:
        return at_url[0]
    if not at_url:
        raise NodeUnreadableError(
            "the node names no member account and no member's registered endpoint is this "
            "URL (pin it with --member URL=ACCOUNT)"
        )
    raise NodeUnreadableError("several members are registered at this URL: pin one with --member")


@dataclass(frozen=True)
class VerifyOptions:
    """How to reach the nodes and how strict to be."""

    tokens: TokenSources = field(default_factory=TokenSources)
    pins: dict[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | bool = True
    timeout: float = 30.0
    strict: bool = False
    require_anchored: bool = False


@dataclass
class _NodeState:
    report: NodeReport
    sides: list[TransferSide] = field(default_factory=list)


def verify_network(
    urls: Sequence[str], chain: Chain, deployment: Deployment, options: VerifyOptions
) -> Report:
    """Verify every node's log and the transfers between them; the report says what was found."""
    normalized = list(dict.fromkeys(normalize_url(u) for u in urls))
    members = ConsortiumClient(chain, deployment).members()
    anchors = AuditAnchorClient(chain, deployment)
    snapshot_block = chain.block_number()
    states = [_verify_node(url, members, anchors, snapshot_block, options) for url in normalized]
    readable = {
        s.report.url: s.report.member
        for s in states
        if s.report.error is None and s.report.member is not None
    }
    unreadable = {
        s.report.member: s.report.url
        for s in states
        if s.report.error is not None and s.report.member is not None
    }
    transfers = check_transfers(
        [side for s in states for side in s.sides],
        readable,
        unreadable,
        ChainRecords(chain, deployment),
        strict=options.strict,
    )
    return Report(nodes=[s.report for s in states], transfers=transfers, strict=options.strict)


def _verify_node(
    url: str,
    members: Sequence[Member],
    anchors: AuditAnchorClient,
    snapshot_block: int,
    options: VerifyOptions,
) -> _NodeState:
    state = _NodeState(NodeReport(url))
    with NodeReader(url, tls=options.tls, timeout=options.timeout) as reader:
        try:
            member = resolve_member(url, reader.member_claim(), options.pins.get(url), members)
            state.report.member = member.account.lower()
            state.report.hospital_id = member.hospital_id
            reader.set_token(options.tokens.token_for(url, member.hospital_id))
            before = [
                a
                for a in _chain_anchors(anchors, member.account)
                if a.block_number <= snapshot_block
            ]
            snapshot = reader.snapshot(at_least=max((a.size for a in before), default=0))
        except (NodeUnreadableError, AuditInputError) as exc:
            state.report.error = str(exc)
            return state
    # Read again after the snapshot: an anchor the node made meanwhile may be cited in it.
    chain_anchors = _chain_anchors(anchors, member.account)
    r = state.report
    r.log = check_log(
        snapshot.entries,
        snapshot.size,
        chain_anchors,
        require_anchored=options.require_anchored,
    )
    for index in sorted(snapshot.entries):
        try:
            event = AuditEvent.from_canonical(snapshot.entries[index].leaf)
        except (AuditEventError, ValueError):
            continue  # not an event: its entry cannot be one the node recorded (edited)
        side = transfer_side(event, url, index)
        if side is None:
            continue
        state.sides.append(side)
        if side.side == "owner":
            r.transfers_owner += 1
        else:
            r.transfers_requester += 1
    return state


def _chain_anchors(anchors: AuditAnchorClient, account: str) -> list[ChainAnchor]:
    return [
        ChainAnchor(size, root, block, tx)
        for size, root, block, tx in anchors.history_with_tx(account)
    ]
