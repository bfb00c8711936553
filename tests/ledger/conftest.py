"""Chain fixtures: a real anvil process (from npm @foundry-rs/anvil) and the embedded chain.

Contract-rule tests take the `env` fixture, parametrized over both chains. Test keys are
generated at test time; anvil accounts are funded with anvil_setBalance, never the dev keys.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger import keystore
from ledger.chain import Chain, connect
from ledger.deploy import Deployment, MemberInfo, deploy_suite
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
# Fast key files in tests only; production keeps the default work factor.
keystore.DEFAULT_SCRYPT_N = 2**10


def anvil_binary() -> Path:
    """The anvil executable the npm package installed (platform package, else the wrapper)."""
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    system = platform.system().lower()
    native = REPO_ROOT / f"node_modules/@foundry-rs/anvil-{system}-{arch}/bin/anvil"
    if native.exists():
        return native
    wrapper = REPO_ROOT / "node_modules/.bin/anvil"
    assert wrapper.exists(), "anvil missing: run `npm ci` (make test does) to install it"
    return wrapper


def rpc(url: str, method: str, params: list[Any] | None = None) -> Any:
    """One raw JSON-RPC call (for anvil_* test controls)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(url, body.encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply.get("result")


class Anvil:
    """A real anvil process on 127.0.0.1, stopped by PID."""

    def __init__(
        self,
        port: int | None = None,
        state_file: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.state_file = state_file
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Anvil:
        args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        args += ["--chain-id", "31337", "--accounts", "1", *self.extra_args]
        if self.state_file is not None:
            # Dumps the chain on shutdown and reloads it at start: an outage keeps its state.
            args += ["--state", str(self.state_file)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                rpc(self.url, "eth_chainId")
                return self
            except OSError:
                assert self.proc.poll() is None, "anvil exited during start-up"
                time.sleep(0.05)
        raise RuntimeError("anvil did not answer within 20 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def fund(self, address: str, wei: int = 10**24) -> None:
        rpc(self.url, "anvil_setBalance", [address, hex(wei)])


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One anvil process for the session (each test deploys its own contracts)."""
    node = Anvil().start()
    yield node
    node.stop()


@dataclass
class ChainEnv:
    """Accounts and a deployed suite on one chain, embedded or anvil."""

    kind: str
    data_dir: Path
    deployer: Chain
    anvil: Anvil | None = None
    chains: list[Chain] = field(default_factory=list)
    deployment: Deployment | None = None

    def new_account(self, fund: bool = True) -> LocalAccount:
        account: LocalAccount = Account.create()
        if fund:
            self.fund(account.address)
        return account

    def fund(self, address: str) -> None:
        if self.anvil is not None:
            self.anvil.fund(address)
        else:
            self.deployer.send_value(address, 10**21)

    def chain_for(self, account: LocalAccount) -> Chain:
        """A connection signing as this account, on the same chain."""
        chain = Chain(
            self.deployer.w3,
            account,
            embedded=self.deployer.embedded,
            rpc_url=self.deployer.rpc_url,
        )
        self.chains.append(chain)
        return chain

    def deploy(self, members: list[tuple[str, LocalAccount]], voting_period: int = 3600) -> None:
        infos = [MemberInfo(hid, acc.address, f"https://{hid}.example") for hid, acc in members]
        self.deployment = deploy_suite(self.deployer, infos, voting_period)

    def advance(self, seconds: int) -> None:
        """Move the chain's clock forward and mine a block."""
        if self.anvil is not None:
            rpc(self.anvil.url, "evm_increaseTime", [seconds])
            rpc(self.anvil.url, "evm_mine")
        else:
            assert self.deployer.embedded is not None
            now = self.deployer.block_timestamp("latest")
            self.deployer.embedded.tester.time_travel(now + seconds)


def make_env(kind: str, tmp_path: Path, anvil_node: Anvil | None) -> ChainEnv:
    deployer: LocalAccount = Account.create()
    if kind == "anvil":
        assert anvil_node is not None
        anvil_node.fund(deployer.address)
        chain = connect(tmp_path, anvil_node.url, account=deployer)
    else:
        chain = connect(tmp_path, None, account=deployer)
    return ChainEnv(kind, tmp_path, chain, anvil_node if kind == "anvil" else None)


@pytest.fixture(params=["embedded", "anvil"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChainEnv]:
    """A fresh chain environment on the embedded chain and on a real anvil process."""
    anvil_node = request.getfixturevalue("anvil") if request.param == "anvil" else None
    e = make_env(request.param, tmp_path, anvil_node)
    yield e
    e.deployer.close()
