"""Connection to the chain: the embedded eth-tester chain (default) or any JSON-RPC node.

Portability rules for real consortium chains (Besu QBFT): the chain id is read from the node,
transactions are signed locally with explicit fee fields (zero-gas chains allowed), PoA
extra-data is tolerated, logs are read in bounded block ranges, and reads that must not be
undone by a reorg stop at a configurable confirmation depth.

The embedded chain cannot snapshot its state to disk, so it keeps a journal instead: a genesis
header (funded accounts, genesis timestamp) followed by every mined raw transaction with its
block timestamp. Opening the data directory replays the journal, which rebuilds the same state
(transactions are deterministic given their block timestamps).
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import (
    BlockNotFound,
    ContractCustomError,
    ContractLogicError,
    ContractPanicError,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import LogReceipt, TxReceipt

from ledger.errors import (
    ChainUnavailableError,
    ConfigurationError,
    LedgerError,
    TransactionFailedError,
    decode_revert,
)

JOURNAL_FILE = "chain/journal.jsonl"
JOURNAL_VERSION = 1
DEFAULT_LOG_BLOCK_RANGE = 2_000
GAS_MARGIN_PERCENT = 25


@dataclass(frozen=True)
class FeePolicy:
    """Explicit fee fields; None means read the suggestion from the node."""

    gas_price: int | None = None  # forces a legacy (type 0) transaction at this price
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None


def _unavailable(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError)


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Map transport failures to ChainUnavailableError and reverts to typed errors."""
    try:
        yield
    except LedgerError:
        raise
    except ContractPanicError as exc:
        raise TransactionFailedError(f"contract panic: {exc}") from None
    except ContractCustomError as exc:
        raise decode_revert(_revert_data(exc)) from None
    except ContractLogicError as exc:
        data = _revert_data(exc)
        raise (
            decode_revert(data) if data else TransactionFailedError(f"reverted: {exc}")
        ) from None
    except Exception as exc:
        tester_data = _eth_tester_revert_data(exc)
        if tester_data is not None:
            raise decode_revert(tester_data) from None
        if _unavailable(exc):
            raise ChainUnavailableError(f"chain unreachable: {type(exc).__name__}") from None
        if isinstance(exc, Web3RPCError):
            # The node refused the request (insufficient funds, nonce too low, ...).
            raise TransactionFailedError(f"the node refused the request: {exc.message}") from None
        if type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("eth"):
            # py-evm's refusal of a transaction on the embedded chain (e.g. unfunded sender).
            raise TransactionFailedError(
                f"the embedded chain refused the transaction: {exc}"
            ) from None
        raise


def _eth_tester_revert_data(exc: BaseException) -> bytes | None:
    # web3's eth-tester provider re-raises reverts as TransactionFailed whose message holds
    # the repr of the revert bytes when they are not an Error(string).
    if type(exc).__name__ != "TransactionFailed":
        return None
    message = str(exc.args[0]) if exc.args else ""
    prefix = "execution reverted: "
    if not message.startswith(prefix):
        return b""
    rest = message[len(prefix) :]
    if rest.startswith(("b'", 'b"')):
        try:
            value = ast.literal_eval(rest)
        except (ValueError, SyntaxError):
            return b""
        return value if isinstance(value, bytes) else b""
    return b""


def _revert_data(exc: ContractLogicError) -> str | None:
    data = exc.data
    if isinstance(data, str) and data.startswith("0x"):
        return data
    if isinstance(data, dict):
        inner = data.get("data")
        return inner if isinstance(inner, str) else None
    if isinstance(exc.args[0] if exc.args else None, str) and str(exc.args[0]).startswith("0x"):
        return str(exc.args[0])
    return None


class Journal:
    """Append-only record of the embedded chain: genesis header, then mined raw transactions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = open(path, "a+")  # noqa: SIM115 - held for the chain's lifetime
        try:
            # One process owns an embedded chain; a second would fork it.
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise ChainUnavailableError(
                f"the embedded chain in {path.parent.parent} is open in another process; "
                "use --rpc for a shared chain"
            ) from None

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The header and the transaction entries recorded so far."""
        self._fh.seek(0)
        lines = [line for line in self._fh.read().splitlines() if line.strip()]
        if not lines:
            return None, []
        try:
            header = json.loads(lines[0])
            entries = [json.loads(line) for line in lines[1:]]
        except ValueError:
            raise ConfigurationError(f"embedded chain journal {self.path} is corrupt") from None
        if header.get("version") != JOURNAL_VERSION:
            raise ConfigurationError(f"unsupported embedded chain journal version in {self.path}")
        return header, entries

    def append(self, record: dict[str, Any]) -> None:
        """Durably append one record."""
        self._fh.seek(0, os.SEEK_END)
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Release the file and its lock."""
        if not self._fh.closed:
            self._fh.close()


class EmbeddedChainState:
    """An in-process eth-tester chain whose history persists through a Journal."""

    def __init__(self, data_dir: Path, funded: list[str]) -> None:
        from eth_tester import EthereumTester, PyEVMBackend  # heavy: import only when embedded

        self.journal = Journal(Path(data_dir) / JOURNAL_FILE)
        header, entries = self.journal.read()
        if header is None:
            header = {
                "version": JOURNAL_VERSION,
                "genesis_timestamp": int(time.time()) - 1,
                "funded": sorted(to_checksum_address(a) for a in funded),
            }
            self.journal.append(header)
        self.funded = list(header["funded"])
        genesis_state = {
            bytes.fromhex(addr[2:]): {
                "balance": 10**9 * 10**18,
                "storage": {},
                "code": b"",
                "nonce": 0,
            }
            for addr in self.funded
        }
        params = PyEVMBackend.generate_genesis_params(
            overrides={"timestamp": header["genesis_timestamp"]}
        )
        self.backend = PyEVMBackend(genesis_parameters=params, genesis_state=genesis_state)
        self.tester = EthereumTester(backend=self.backend)
        for entry in entries:
            self._set_next_timestamp(int(entry["timestamp"]))
            self.tester.send_raw_transaction(entry["raw"])

    def _set_next_timestamp(self, timestamp: int) -> None:
        chain = self.backend.chain
        chain.header = chain.header.copy(timestamp=timestamp)

    def prepare_block(self) -> None:
        """Stamp the pending block with the current time, like a live node would.

        py-evm stamps a pending block when the previous one is mined, so after an idle spell
        block.timestamp would lag the clock and deadlines and expiries would be judged late.
        """
        parent = self.backend.chain.get_canonical_head()
        self._set_next_timestamp(max(int(time.time()), int(parent.timestamp) + 1))

    def record(self, raw_tx: str, timestamp: int) -> None:
        """Journal a transaction that was just mined at this block timestamp."""
        self.journal.append({"raw": raw_tx, "timestamp": timestamp})

    def close(self) -> None:
        """Release the journal."""
        self.journal.close()


class Chain:
    """A connected chain with the node's signing account."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount | None,
        *,
        confirmations: int = 0,
        log_block_range: int = DEFAULT_LOG_BLOCK_RANGE,
        fees: FeePolicy | None = None,
        embedded: EmbeddedChainState | None = None,
        rpc_url: str | None = None,
        receipt_timeout: float = 60.0,
        poll_latency: float = 0.005,
    ) -> None:
        if confirmations < 0 or log_block_range < 1:
            raise ConfigurationError("confirmations must be ≥ 0 and log_block_range ≥ 1")
        self.w3 = w3
        self.account = account
        self.confirmations = confirmations
        self.log_block_range = log_block_range
        self.fees = fees or FeePolicy()
        self.embedded = embedded
        self.rpc_url = rpc_url
        self.receipt_timeout = receipt_timeout
        # Receipt polling interval: short, since dev chains mine instantly and QBFT in ~1-2 s.
        self.poll_latency = poll_latency
        self._lock = threading.RLock()
        with rpc_errors():
            self.chain_id: int = int(w3.eth.chain_id)

    # -- identity -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The signing account's checksummed address."""
        if self.account is None:
            raise ConfigurationError("no signing account: this connection is read-only")
        return str(self.account.address)

    @property
    def is_embedded(self) -> bool:
        """True for the in-process eth-tester chain."""
        return self.embedded is not None

    def close(self) -> None:
        """Release the embedded chain's journal lock (no-op for RPC)."""
        if self.embedded is not None:
            self.embedded.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ----------------------------------------------------------------------------

    def block_number(self) -> int:
        """The head block number."""
        with self._lock, rpc_errors():
            return int(self.w3.eth.block_number)

    def confirmed_block(self) -> int:
        """The newest block at the configured confirmation depth (never below 0)."""
        return max(0, self.block_number() - self.confirmations)

    def block_timestamp(self, block: int | str = "latest") -> int:
        """A block's timestamp."""
        with self._lock, rpc_errors():
            return int(self.w3.eth.get_block(block)["timestamp"])  # type: ignore[arg-type]

    def block_hash(self, number: int) -> bytes | None:
        """The hash of the canonical block at ``number``; None when the chain is not that long."""
        with self._lock, rpc_errors():
            try:
                return bytes(self.w3.eth.get_block(number)["hash"])
            except BlockNotFound:
                return None

    def block_info(self, block: int | str = "latest") -> tuple[bytes, int]:
        """A block's hash and timestamp (one RPC)."""
        with self._lock, rpc_errors():
            b = self.w3.eth.get_block(block)  # type: ignore[arg-type]
            return bytes(b["hash"]), int(b["timestamp"])

    def call(self, fn: ContractFunction, block: int | str = "latest") -> Any:
        """Run a view function, decoding reverts into typed errors."""
        tx: dict[str, Any] = {} if self.account is None else {"from": self.account.address}
        with self._lock, rpc_errors():
            return fn.call(tx, block_identifier=block)  # type: ignore[arg-type]

    def get_logs(
        self,
        address: str | list[str],
        from_block: int,
        to_block: int | None = None,
        topics: list[Any] | None = None,
    ) -> list[LogReceipt]:
        """Logs in [from_block, to_block], fetched in ranges of at most log_block_range blocks."""
        end = self.block_number() if to_block is None else to_block
        out: list[LogReceipt] = []
        start = max(0, from_block)
        while start <= end:
            stop = min(end, start + self.log_block_range - 1)
            params: dict[str, Any] = {"address": address, "fromBlock": start, "toBlock": stop}
            if topics is not None:
                params["topics"] = topics
            with self._lock, rpc_errors():
                out.extend(self.w3.eth.get_logs(params))  # type: ignore[arg-type]
            start = stop + 1
        return out

    def receipt(self, tx_hash: str) -> TxReceipt | None:
        """A mined transaction's receipt; None when the chain does not know the transaction."""
        with self._lock, rpc_errors():
            try:
                return self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except (TransactionNotFound, Web3RPCError):
                return None

    def is_canonical(self, tx_hash: str, block_number: int | None = None) -> bool:
        """Whether the transaction is in the canonical chain (at block_number, when given)."""
        with self._lock, rpc_errors():
            try:
                receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                return False
            except Web3RPCError:
                return False
            if receipt is None:
                return False
            if block_number is not None and int(receipt["blockNumber"]) != block_number:
                return False
            block = self.w3.eth.get_block(receipt["blockNumber"])
            return bool(block["hash"] == receipt["blockHash"])

    # -- writes ---------------------------------------------------------------------------

    def _fee_fields(self) -> dict[str, int]:
        if self.fees.gas_price is not None:
            return {"gasPrice": self.fees.gas_price}
        latest = self.w3.eth.get_block("latest")
        base_fee = latest.get("baseFeePerGas")
        if base_fee is None:  # pre-London chain (e.g. a free-gas Besu network): legacy tx
            return {"gasPrice": int(self.w3.eth.gas_price)}
        if self.fees.max_priority_fee_per_gas is not None:
            priority = self.fees.max_priority_fee_per_gas
        else:
            priority = 0 if base_fee == 0 else 10**9
        max_fee = self.fees.max_fee_per_gas
        if max_fee is None:
            max_fee = 2 * int(base_fee) + priority
        return {"maxFeePerGas": max_fee, "maxPriorityFeePerGas": priority}

    def _sign_and_send(self, tx: dict[str, Any]) -> TxReceipt:
        """Sign locally, send, wait for the receipt; journal it when embedded."""
        if self.account is None:
            raise ConfigurationError("no signing account: this connection is read-only")
        tx = dict(tx)
        if self.embedded is not None:
            self.embedded.prepare_block()
        tx.setdefault("chainId", self.chain_id)
        tx["nonce"] = self.w3.eth.get_transaction_count(self.account.address, "pending")
        tx.update(self._fee_fields())
        if "gas" not in tx:
            estimate = int(self.w3.eth.estimate_gas(tx))  # type: ignore[arg-type]
            tx["gas"] = estimate + estimate * GAS_MARGIN_PERCENT // 100
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(
            tx_hash, timeout=self.receipt_timeout, poll_latency=self.poll_latency
        )
        if self.embedded is not None:
            ts = int(self.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
            self.embedded.record("0x" + bytes(signed.raw_transaction).hex(), ts)
        if receipt["status"] != 1:
            raise TransactionFailedError(f"transaction {tx_hash.hex()} failed on chain")
        return receipt

    def transact(self, fn: ContractFunction, gas: int | None = None) -> TxReceipt:
        """Sign and send a contract call; reverts (found by gas estimation) become typed errors."""
        with self._lock, rpc_errors():
            # Every field given, so web3 makes no RPC here; only to and data are kept.
            built = fn.build_transaction(
                {  # type: ignore[arg-type]
                    "from": self.address,
                    "chainId": self.chain_id,
                    "gas": 1,
                    "nonce": 0,
                    "maxFeePerGas": 0,
                    "maxPriorityFeePerGas": 0,
                    "value": 0,
                }
            )
            tx: dict[str, Any] = {"from": self.address, "to": built["to"], "data": built["data"]}
            if gas is not None:
                tx["gas"] = gas
            # Without an explicit gas, estimation simulates the call first: a revert is decoded
            # there instead of burning gas on chain.
            return self._sign_and_send(tx)

    def deploy(self, abi: list[dict[str, Any]], bytecode: str, *args: Any) -> tuple[str, TxReceipt]:
        """Deploy a contract; returns its address and the receipt."""
        with self._lock, rpc_errors():
            factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
            data = factory.constructor(*args).data_in_transaction
            receipt = self._sign_and_send({"from": self.address, "data": data})
            address = receipt["contractAddress"]
            if address is None:
                raise TransactionFailedError("deployment produced no contract address")
            return to_checksum_address(address), receipt

    def send_value(self, to: str, wei: int) -> TxReceipt:
        """Transfer ether (funding accounts on development chains)."""
        with self._lock, rpc_errors():
            return self._sign_and_send(
                {"from": self.address, "to": to_checksum_address(to), "value": wei, "gas": 21_000}
            )


def _rpc_web3(rpc_url: str, timeout: float) -> Web3:
    from web3.middleware import ExtraDataToPOAMiddleware

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    # QBFT/Clique put validator data in extraData; tolerate it on every RPC chain.
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    # web3's validation middleware asks the node for its chain id on every transaction; the
    # chain id is read once at connect and set on every transaction we sign.
    w3.middleware_onion.remove("validation")
    return w3


def connect(
    data_dir: Path,
    rpc_url: str | None = None,
    *,
    account: LocalAccount | None = None,
    confirmations: int = 0,
    log_block_range: int = DEFAULT_LOG_BLOCK_RANGE,
    fees: FeePolicy | None = None,
    timeout: float = 10.0,
) -> Chain:
    """Connect to the chain for this data directory (embedded when rpc_url is None).

    The node account comes from the data directory's keystore (created on first use).
    """
    from ledger.keystore import ensure_node_account

    data_dir = Path(data_dir)
    if account is None:
        account = ensure_node_account(data_dir)
    if rpc_url is None:
        from web3 import EthereumTesterProvider

        state = EmbeddedChainState(data_dir, funded=[account.address])
        if account.address not in state.funded:
            state.close()
            raise ConfigurationError(
                f"the embedded chain in {data_dir} was created for node account "
                f"{state.funded[0]}, not {account.address}; restore that key or use a new "
                "data directory"
            )
        try:
            w3 = Web3(EthereumTesterProvider(state.tester))
            return Chain(
                w3,
                account,
                confirmations=confirmations,
                log_block_range=log_block_range,
                fees=fees,
                embedded=state,
            )
        except BaseException:
            state.close()
            raise
    if not rpc_url.startswith(("http://", "https://")):
        raise ConfigurationError(f"unsupported RPC URL {rpc_url!r}: use http:// or https://")
    return Chain(
        _rpc_web3(rpc_url, timeout),
        account,
        confirmations=confirmations,
        log_block_range=log_block_range,
        fees=fees,
        rpc_url=rpc_url,
    )
