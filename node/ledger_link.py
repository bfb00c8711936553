"""The node's connection to the ledger: chain, deployment, consent client and consent cache.

Opened once at start-up (`open_ledger`) when the ledger data directory holds a deployment
file, kept on `app.state`, closed at shutdown. A node without a deployment runs without a
ledger: local care works, cross-hospital consent answers 503 (`LedgerUnavailableError`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from ledger.chain import Chain, connect
from ledger.consent import ConsentCache, ConsentClient
from ledger.consortium import ConsortiumClient
from ledger.deploy import DEPLOYMENT_FILE, Deployment, check_deployment, load_deployment
from ledger.errors import ChainUnavailableError, LedgerError
from ledger.keystore import NODE_KEY_FILE, NODE_PASSWORD_ENV, NODE_PASSWORD_FILE, read_key_file
from node.services.consent_errors import (
    LedgerConfigError,
    LedgerRefusedError,
    LedgerUnavailableError,
)
from node.settings import NodeSettings

log = logging.getLogger("pacsmesh.ledger")
# Hospital ids change only by a membership vote; a minute of memo saves an RPC per resource.
_MEMBER_MEMO_SECONDS = 60.0


@dataclass
class LedgerLink:
    """Everything the node uses on the chain, opened once and shared."""

    chain: Chain
    deployment: Deployment
    consent: ConsentClient
    cache: ConsentCache
    consortium: ConsortiumClient
    _hospital_ids: dict[str, tuple[float, str]] = field(default_factory=dict, repr=False)

    @property
    def account(self) -> str:
        """This node's member account (the address that signs its transactions)."""
        return self.chain.address

    def hospital_id(self, account: str | None = None) -> str:
        """A member's hospital id from the registry ('' when not a member); memoised briefly."""
        key = (account or self.account).lower()
        hit = self._hospital_ids.get(key)
        if hit is not None and time.monotonic() - hit[0] < _MEMBER_MEMO_SECONDS:
            return hit[1]
        try:
            hospital = self.consortium.member(account or self.account).hospital_id
        except LedgerError as exc:
            raise LedgerRefusedError(exc) from None
        self._hospital_ids[key] = (time.monotonic(), hospital)
        return hospital

    def close(self) -> None:
        """Stop the cache's sync thread and release the chain (the embedded chain's lock)."""
        self.cache.stop()
        self.chain.close()


def ledger_of(state: Any, unavailable: str = "cross-hospital consent is unavailable") -> LedgerLink:
    """The app's ledger link (`app.state.ledger`), or 503 saying what is `unavailable` and why."""
    link: LedgerLink | None = getattr(state, "ledger", None)
    if link is None:
        reason = getattr(state, "ledger_error", None) or (
            "this node has no ledger deployment (deployment.json in its ledger data directory)"
        )
        raise LedgerUnavailableError(f"{unavailable}: {reason}")
    return link


def _passphrase(settings: NodeSettings, key_dir: Path) -> str:
    """The member key's passphrase from its configured source; never logged."""
    source = settings.ledger_key_passphrase
    if source is not None:
        kind, _, where = source.partition(":")
        if kind == "env" and where:
            value = os.environ.get(where)
            if not value:
                raise LedgerConfigError(f"the ledger key passphrase variable {where} is not set")
            return value
        if kind == "file" and where:
            try:
                return Path(where).read_text().rstrip("\n")
            except OSError:
                raise LedgerConfigError("cannot read the ledger key passphrase file") from None
        raise LedgerConfigError("ledger_key_passphrase must be env:VARIABLE or file:PATH")
    env = os.environ.get(NODE_PASSWORD_ENV)
    if env:
        return env
    dev_file = key_dir / NODE_PASSWORD_FILE
    if settings.environment == "production":
        # The development password file sits beside the key it protects.
        raise LedgerConfigError(
            f"production nodes must name the ledger key passphrase (env:VAR or file:PATH) "
            f"or set {NODE_PASSWORD_ENV}"
        )
    try:
        return dev_file.read_text().strip()
    except OSError:
        raise LedgerConfigError(
            f"no passphrase for the ledger member key: set ledger_key_passphrase or "
            f"{NODE_PASSWORD_ENV}"
        ) from None


def load_member_key(settings: NodeSettings) -> LocalAccount:
    """The node's member account from its encrypted key file."""
    key_file = settings.ledger_key_file or settings.ledger_dir / "keys" / NODE_KEY_FILE
    password = _passphrase(settings, key_file.parent)
    try:
        return read_key_file(key_file, password)
    except LedgerError as exc:
        raise LedgerConfigError(f"ledger member key: {exc}") from None


def open_ledger(settings: NodeSettings) -> LedgerLink | None:
    """Connect to the chain when a deployment exists; None when this node has none.

    Configuration errors (key, passphrase, a deployment for another chain) stop the node;
    an unreachable chain (or an embedded chain another process holds) raises
    LedgerUnavailableError, which the caller may turn into a degraded start.
    """
    ledger_dir = settings.ledger_dir
    if not (ledger_dir / DEPLOYMENT_FILE).exists():
        return None
    account = load_member_key(settings)
    try:
        deployment = load_deployment(ledger_dir)
        chain = connect(
            ledger_dir,
            settings.ledger_rpc,
            account=account,
            confirmations=settings.ledger_confirmations,
        )
    except ChainUnavailableError as exc:
        raise LedgerUnavailableError(f"ledger unavailable: {exc}") from None
    except LedgerError as exc:
        raise LedgerConfigError(f"ledger: {exc}") from None
    try:
        check_deployment(chain, deployment)
        cache = ConsentCache(
            chain, deployment, max_age_seconds=settings.ledger_consent_max_age_seconds
        )
        cache.sync()  # a first answer before the node takes requests
    except ChainUnavailableError as exc:
        chain.close()
        raise LedgerUnavailableError(f"ledger unavailable: {exc}") from None
    except LedgerError as exc:
        chain.close()
        raise LedgerConfigError(f"ledger: {exc}") from None
    cache.start(interval=settings.ledger_consent_refresh_seconds)
    link = LedgerLink(
        chain=chain,
        deployment=deployment,
        consent=ConsentClient(chain, deployment),
        cache=cache,
        consortium=ConsortiumClient(chain, deployment),
    )
    log.info("ledger connected: chain %s, member %s", chain.chain_id, chain.address)
    return link


def open_ledger_link(app: Any, settings: NodeSettings) -> None:
    """Open the ledger for an app and publish it on `app.state`.

    `app.state.ledger` is the LedgerLink (None without a deployment or while the chain is
    unreachable, with the reason in `app.state.ledger_error`); `app.state.ledger_chain` and
    `app.state.ledger_deployment` are its chain and deployment for other parts (audit
    anchoring, peers). Configuration errors propagate: the node must not start misconfigured.
    """
    state = app.state
    state.ledger, state.ledger_chain, state.ledger_deployment = None, None, None
    state.ledger_error = None
    try:
        link = open_ledger(settings)
    except LedgerUnavailableError as exc:
        # Local care goes on; consent endpoints answer 503 with this reason.
        log.warning("%s; cross-hospital consent is unavailable", exc.message)
        state.ledger_error = exc.message
        return
    if link is None:
        return
    state.ledger, state.ledger_chain, state.ledger_deployment = link, link.chain, link.deployment


def close_ledger_link(app: Any) -> None:
    """Stop the consent cache and release the chain."""
    link: LedgerLink | None = getattr(app.state, "ledger", None)
    if link is not None:
        link.close()
        app.state.ledger = None
