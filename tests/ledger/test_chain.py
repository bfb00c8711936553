"""Chain portability: zero-gas networks, legacy fees, bounded log ranges, journal replay."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from eth_account import Account

from ledger.anchor import AuditAnchorClient
from ledger.chain import Chain, FeePolicy, connect
from ledger.consent import ConsentClient, Purpose
from ledger.deploy import MemberInfo, deploy_suite
from ledger.errors import ConfigurationError, TransactionFailedError
from tests.ledger.conftest import Anvil, rpc


@pytest.mark.integration
def test_zero_gas_chain_needs_no_funds(tmp_path: Path) -> None:
    # Like a free-gas Besu QBFT network: zero base fee, zero gas price.
    anvil = Anvil(extra_args=["--base-fee", "0", "--gas-price", "0"]).start()
    try:
        node = Account.create()  # never funded
        rpc(anvil.url, "anvil_setBalance", [node.address, "0x0"])
        chain = connect(tmp_path, anvil.url, account=node)
        deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
        receipt = AuditAnchorClient(chain, deployment).anchor(10, b"\x05" * 32)
        tx = chain.w3.eth.get_transaction(receipt.tx_hash)  # type: ignore[arg-type]
        assert tx["maxFeePerGas"] == 0 and tx["maxPriorityFeePerGas"] == 0
        assert chain.w3.eth.get_balance(node.address) == 0
    finally:
        anvil.stop()


@pytest.mark.integration
def test_legacy_gas_price_policy(anvil: Anvil, tmp_path: Path) -> None:
    node = Account.create()
    anvil.fund(node.address)
    price = 3 * 10**9
    chain = connect(tmp_path, anvil.url, account=node, fees=FeePolicy(gas_price=price))
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    receipt = AuditAnchorClient(chain, deployment).anchor(1, b"\x01" * 32)
    tx = chain.w3.eth.get_transaction(receipt.tx_hash)  # type: ignore[arg-type]
    assert tx["type"] == 0 and tx["gasPrice"] == price


@pytest.mark.integration
def test_logs_are_read_in_bounded_ranges_without_losing_any(anvil: Anvil, tmp_path: Path) -> None:
    node = Account.create()
    anvil.fund(node.address)
    chain = connect(tmp_path, anvil.url, account=node)
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    client = AuditAnchorClient(chain, deployment)
    for size in range(1, 8):
        client.anchor(size, size.to_bytes(32, "big"))
        rpc(anvil.url, "evm_mine")  # spread anchors over many blocks
    narrow = Chain(chain.w3, node, log_block_range=2, rpc_url=anvil.url)
    calls = 0
    original = narrow.w3.eth.get_logs

    def counting(params):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        assert params["toBlock"] - params["fromBlock"] < 2
        return original(params)

    narrow.w3.eth.get_logs = counting  # type: ignore[method-assign]
    try:
        history = AuditAnchorClient(narrow, deployment).history(node.address)
    finally:
        narrow.w3.eth.get_logs = original  # type: ignore[method-assign]
    assert [s for s, _r, _b in history] == list(range(1, 8))
    assert calls >= 7


def test_journal_replay_keeps_block_timestamps(tmp_path: Path) -> None:
    node, patient = Account.create(), Account.create()
    chain = connect(tmp_path, account=node)
    deployment = deploy_suite(chain, [MemberInfo("hosp-a", node.address, "https://a")])
    consent = ConsentClient(chain, deployment)
    # A signature whose deadline is met only at the original block time: replaying at a later
    # time would revert it and silently drop the grant.
    request = consent.request(patient.address, node.address, Purpose.TREATMENT, deadline_seconds=2)
    consent.relay(consent.sign(patient, request))
    head, stamp = chain.block_number(), chain.block_timestamp()
    chain.close()

    reopened = connect(tmp_path, account=node)
    try:
        assert reopened.block_number() == head
        assert reopened.block_timestamp(head) == stamp
        assert ConsentClient(reopened, deployment).nonce(patient.address) == 1
        assert reopened.w3.eth.get_balance(node.address) == chain.w3.eth.get_balance(node.address)
    finally:
        reopened.close()


def test_qbft_extra_data_is_tolerated(tmp_path: Path) -> None:
    """A JSON-RPC node answering like Besu QBFT (97+ bytes of extraData; Besu cannot run here)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    extra = "0x" + "f8" * 160  # RLP validator list, vote, round, seals: far over 32 bytes
    block = {
        "number": "0x2a", "hash": "0x" + "ab" * 32, "parentHash": "0x" + "cd" * 32,
        "nonce": "0x0000000000000000", "sha3Uncles": "0x" + "00" * 32,
        "logsBloom": "0x" + "00" * 256, "transactionsRoot": "0x" + "00" * 32,
        "stateRoot": "0x" + "00" * 32, "receiptsRoot": "0x" + "00" * 32,
        "miner": "0x" + "00" * 20, "difficulty": "0x1", "totalDifficulty": "0x2a",
        "extraData": extra, "size": "0x400", "gasLimit": "0x1c9c380", "gasUsed": "0x0",
        "timestamp": "0x6553f100", "transactions": [], "uncles": [], "mixHash": "0x" + "63" * 32,
        "baseFeePerGas": "0x0",
    }  # fmt: skip
    answers = {"eth_chainId": "0x539", "eth_blockNumber": "0x2a", "eth_getBlockByNumber": block}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["content-length"])))
            body = json.dumps(
                {"jsonrpc": "2.0", "id": request["id"], "result": answers[request["method"]]}
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        chain = connect(tmp_path, url, account=Account.create())
        assert chain.chain_id == 1337
        assert chain.block_info(42) == (bytes.fromhex("ab" * 32), 0x6553F100)
        assert chain.block_timestamp() == 0x6553F100
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_node_refusals_are_typed(anvil: Anvil, tmp_path: Path) -> None:
    broke = Account.create()  # no funds on a chain that charges gas
    chain = connect(tmp_path, anvil.url, account=broke)
    with pytest.raises(TransactionFailedError, match="refused"):
        chain.send_value("0x" + "22" * 20, 1)


def test_embedded_chain_refuses_a_foreign_node_key(tmp_path: Path) -> None:
    connect(tmp_path, account=Account.create()).close()
    with pytest.raises(ConfigurationError, match="was created for node account"):
        connect(tmp_path, account=Account.create())


def test_embedded_blocks_follow_the_clock_after_idle_time(tmp_path: Path) -> None:
    chain = connect(tmp_path, account=Account.create())
    try:
        chain.send_value("0x" + "22" * 20, 1)
        time.sleep(2.2)  # an idle node: no block mined meanwhile
        before = int(time.time())
        receipt = chain.send_value("0x" + "22" * 20, 1)
        # Deadlines and expiries are judged at block time, so it must not lag the clock.
        assert chain.block_timestamp(receipt["blockNumber"]) >= before
    finally:
        chain.close()
