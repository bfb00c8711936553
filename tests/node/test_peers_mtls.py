"""Consortium mutual TLS on a real uvicorn server: the handshake admits only CA-issued
certificates, and the app admits only those registered to an active member now."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI

from ledger.consortium import ConsortiumClient, ProposalKind, ProposalStatus
from ledger.deploy import MemberInfo, deploy_suite
from ledger.pki import (
    create_ca,
    load_ca_cert,
)
from node.api.peer_auth import PeerDep
from node.app import _install_error_handlers
from node.tls.contexts import client_context, server_context
from node.tls.peers import PeerDirectory, RegistryMembers
from node.tls.uvicorn_mtls import MtlsH11Protocol, MtlsHttpToolsProtocol
from tests.ledger.conftest import ChainEnv, free_port, make_env
from tests.node.exchange_helpers import NodeCert, issue

PASSPHRASE = b"correct horse battery staple"


@dataclass
class Consortium:
    env: ChainEnv
    ca_cert: Path
    certs: dict[str, NodeCert]
    accounts: dict[str, LocalAccount]
    registry: ConsortiumClient

    def client_for(self, name: str) -> ConsortiumClient:
        assert self.env.deployment is not None
        return ConsortiumClient(self.env.chain_for(self.accounts[name]), self.env.deployment)


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    ca = create_ca(tmp_path / "ca", PASSPHRASE)
    other_ca = create_ca(tmp_path / "other-ca", PASSPHRASE)
    certs = {name: issue(ca, tmp_path, name) for name in ("a", "b", "c", "stranger")}
    certs["forged"] = issue(other_ca, tmp_path, "forged")
    env = make_env("embedded", tmp_path / "chain", None)
    accounts = {name: env.new_account() for name in ("a", "b", "c")}
    founders = [
        MemberInfo(
            f"hospital-{n}", accounts[n].address, f"https://{n}.example", certs[n].fingerprint
        )
        for n in ("a", "b", "c")
    ]
    env.deployment = deploy_suite(env.deployer, founders, 3600)
    registry = ConsortiumClient(env.deployer, env.deployment)
    yield Consortium(env, tmp_path / "ca" / "ca.crt", certs, accounts, registry)
    env.deployer.close()


@dataclass
class RunningServer:
    url: str
    calls: list[str]


def serve(consortium: Consortium, protocol: type[Any]) -> Iterator[RunningServer]:
    app = FastAPI()
    _install_error_handlers(app)
    app.state.peer_directory = PeerDirectory(
        RegistryMembers(consortium.registry), load_ca_cert(consortium.ca_cert)
    )
    calls: list[str] = []

    @app.get("/network/whoami")
    def whoami(peer: PeerDep) -> dict[str, str]:
        calls.append(peer.hospital_id)
        return {"hospital_id": peer.hospital_id, "fingerprint": peer.tls_fingerprint}

    a = consortium.certs["a"]
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=protocol,
        log_level="warning",
        ssl_context_factory=lambda _cfg, _default: server_context(
            a.cert, a.key, consortium.ca_cert
        ),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield RunningServer(f"https://127.0.0.1:{port}", calls)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(params=[MtlsH11Protocol, MtlsHttpToolsProtocol], ids=["h11", "httptools"])
def server(request: pytest.FixtureRequest, consortium: Consortium) -> Iterator[RunningServer]:
    yield from serve(consortium, request.param)


def get_whoami(consortium: Consortium, server: RunningServer, name: str | None) -> httpx.Response:
    if name is None:
        ctx = ssl.create_default_context(cafile=str(consortium.ca_cert))
    else:
        c = consortium.certs[name]
        ctx = client_context(c.cert, c.key, consortium.ca_cert)
    with httpx.Client(verify=ctx, timeout=10) as client:
        return client.get(f"{server.url}/network/whoami")


def test_member_with_ca_certificate_is_accepted_and_identified(
    consortium: Consortium, server: RunningServer
) -> None:
    r = get_whoami(consortium, server, "b")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "hospital_id": "hospital-b",
        "fingerprint": consortium.certs["b"].fingerprint.hex(),
    }


@pytest.mark.parametrize("name", ["forged", None], ids=["other-ca", "no-certificate"])
def test_certificate_from_another_ca_or_none_is_refused_at_handshake(
    consortium: Consortium, server: RunningServer, name: str | None
) -> None:
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        get_whoami(consortium, server, name)
    assert server.calls == []  # the app never saw the request


def test_unregistered_ca_certificate_gets_403(
    consortium: Consortium, server: RunningServer
) -> None:
    r = get_whoami(consortium, server, "stranger")
    assert r.status_code == 403
    assert "not registered to an active member" in r.json()["error"]
    assert server.calls == []


def test_removed_member_is_cut_off_from_the_next_block(
    consortium: Consortium, server: RunningServer
) -> None:
    assert get_whoami(consortium, server, "c").status_code == 200
    pid = consortium.client_for("a").propose(ProposalKind.REMOVE, consortium.accounts["c"].address)
    assert consortium.client_for("b").vote(pid, True).status is ProposalStatus.EXECUTED
    r = get_whoami(consortium, server, "c")
    assert r.status_code == 403, r.text
    assert get_whoami(consortium, server, "b").status_code == 200
    assert server.calls == ["hospital-c", "hospital-b"]
