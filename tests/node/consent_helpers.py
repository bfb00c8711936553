"""Consent test helpers: a node on a loopback socket connected to a real chain.

The chain is either the embedded one (persisted in the node's ledger directory, so only the
node process may open it: tests reach it through `app.state.ledger`) or a real anvil process
(the test holds its own connection, as another hospital would).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger import keystore
from ledger.chain import connect
from ledger.consent import ConsentClient, Purpose, SignedConsent, study_hash
from ledger.deploy import Deployment, MemberInfo, deploy_suite, save_deployment
from node.app import create_app
from node.auth.middleware import BearerAuthMiddleware, RouteRule
from node.auth.tokens import tokens_for
from node.ledger_link import LedgerLink
from node.services.archive import Archive
from node.services.consent_intake import consent_body
from node.settings import NodeSettings
from tests.ledger.conftest import Anvil
from tests.node.conftest import free_port
from tests.node.fhir_helpers import FhirNode

# Fast key files in tests only; production keeps the default work factor.
keystore.DEFAULT_SCRYPT_N = 2**10
HOSPITAL_A = "hosp-a"
HOSPITAL_B = "hosp-b"


@dataclass
class Consortium:
    """Where the node's ledger lives and who the other member is."""

    ledger_dir: Path
    deployment: Deployment
    node_account: str
    member_b: LocalAccount
    anvil: Anvil | None = None


def make_consortium(ledger_dir: Path, anvil: Anvil | None = None) -> Consortium:
    """Create the node's member key, deploy the suite (A = the node, B = another hospital)."""
    account = keystore.ensure_node_account(ledger_dir)  # dev password file beside it
    member_b: LocalAccount = Account.create()
    if anvil is not None:
        anvil.fund(account.address)
        anvil.fund(member_b.address)
    chain = connect(ledger_dir, anvil.url if anvil else None, account=account)
    try:
        deployment = deploy_suite(
            chain,
            [
                MemberInfo(HOSPITAL_A, account.address, "https://a.example"),
                MemberInfo(HOSPITAL_B, member_b.address, "https://b.example"),
            ],
            3600,
        )
    finally:
        chain.close()  # the embedded chain is the node's from now on
    save_deployment(ledger_dir, deployment)
    return Consortium(ledger_dir, deployment, account.address, member_b, anvil)


@dataclass
class ConsentNode(FhirNode):
    """A FHIR node with its app (for `app.state.ledger`)."""

    @property
    def ledger(self) -> LedgerLink:
        assert self.app is not None
        link: LedgerLink | None = self.app.state.ledger
        assert link is not None, self.app.state.ledger_error
        return link

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request(
            "POST", path, json=body, headers={"Content-Type": "application/fhir+json"}
        )


@contextmanager
def serve_consent_node(
    data_dir: Path,
    consortium: Consortium | None = None,
    rules: tuple[RouteRule, ...] | None = None,
    **overrides: Any,
) -> Iterator[ConsentNode]:
    """Run a node app on a free loopback port, connected to the consortium's chain if given.

    With `rules`, the node's real bearer-token middleware guards it with that route table.
    """
    port = free_port()
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "port": port,
        "fsync": False,
        "dimse_port": 0,
        "hl7_port": 0,
        "ledger_consent_refresh_seconds": 0.2,
        # The app's own default-deny middleware stays off: with `rules` the test installs the
        # real middleware with that table; without, the test's subject is not auth.
        "auth_enabled": False,
    }
    if consortium is not None:
        values["ledger_data_dir"] = consortium.ledger_dir
        if consortium.anvil is not None:
            values["ledger_rpc"] = consortium.anvil.url
    values.update(overrides)
    settings = NodeSettings(**values)
    archive = Archive.open(settings)
    app = create_app(settings, archive)
    if rules is not None:
        app.add_middleware(
            BearerAuthMiddleware, tokens=lambda: tokens_for(settings, app.state), rules=rules
        )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "node did not start"
            time.sleep(0.05)
        yield ConsentNode(f"http://127.0.0.1:{port}", archive, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        archive.close()


def signed_grant(
    client: ConsentClient,
    patient: LocalAccount,
    grantee: str,
    purpose: Purpose = Purpose.TREATMENT,
    study_uid: str | None = None,
    *,
    revoke: bool = False,
    expires_at: int = 0,
) -> SignedConsent:
    """The patient signs a grant (or revocation) with their current nonce."""
    request = client.request(
        patient.address,
        grantee,
        purpose,
        study_hash(study_uid),
        expires_at=expires_at,
        revoke=revoke,
    )
    return client.sign(patient, request)


def consent_post(node: ConsentNode, signed: SignedConsent, patient_id: int) -> dict[str, Any]:
    """The Consent body a patient app posts for this signature."""
    link = node.ledger
    return consent_body(
        signed, link.chain.chain_id, link.deployment.consent_registry, str(patient_id)
    )
