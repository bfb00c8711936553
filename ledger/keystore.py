"""Encrypted key files (Web3 Secret Storage, the eth-account format) for node and patient keys.

The node key lives at ``<data-dir>/keys/node.json``. Its password comes from the caller, else
``PACSMESH_NODE_KEY_PASSWORD``, else a ``node.password`` file created beside the key with mode
0600 on first use (development default; production deployments set the variable).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.errors import KeystoreError

NODE_KEY_FILE = "node.json"
NODE_PASSWORD_FILE = "node.password"
NODE_PASSWORD_ENV = "PACSMESH_NODE_KEY_PASSWORD"
# scrypt work factor: 2**16 keeps a CLI start under a second while staying costly to brute-force.
DEFAULT_SCRYPT_N = 2**16


def keys_dir(data_dir: Path) -> Path:
    """Where the data directory keeps its key files."""
    return Path(data_dir) / "keys"


def write_key_file(
    path: Path, account: LocalAccount, password: str, scrypt_n: int | None = None
) -> None:
    """Encrypt the account's key under the password into path (mode 0600, never overwritten)."""
    path = Path(path)
    if path.exists():
        raise KeystoreError(f"refusing to overwrite existing key file {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = DEFAULT_SCRYPT_N if scrypt_n is None else scrypt_n
    blob = Account.encrypt(account.key, password, kdf="scrypt", iterations=n)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(blob, f)


def read_key_file(path: Path, password: str) -> LocalAccount:
    """Decrypt a key file; KeystoreError when missing, malformed or the password is wrong."""
    path = Path(path)
    try:
        blob: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"key file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"key file {path} is not a readable key file") from exc
    try:
        key = Account.decrypt(blob, password)
    except ValueError:
        raise KeystoreError(f"wrong password for key file {path}") from None
    except Exception as exc:  # malformed fields surface as KeyError/TypeError inside eth-keyfile
        raise KeystoreError(f"key file {path} is not a valid encrypted key") from exc
    account: LocalAccount = Account.from_key(key)
    return account


def key_file_address(path: Path) -> str | None:
    """The checksummed address recorded in a key file, without decrypting it."""
    try:
        address = json.loads(Path(path).read_text()).get("address")
    except (OSError, ValueError):
        return None
    if not address:
        return None
    from eth_utils.address import to_checksum_address

    return to_checksum_address("0x" + str(address).removeprefix("0x"))


def generate_key_file(path: Path, password: str, scrypt_n: int | None = None) -> LocalAccount:
    """Create a fresh key, store it encrypted at path, and return the account."""
    account: LocalAccount = Account.create()
    write_key_file(path, account, password, scrypt_n)
    return account


def _node_password(data_dir: Path, password: str | None, create: bool) -> str:
    if password is not None:
        return password
    env = os.environ.get(NODE_PASSWORD_ENV)
    if env:
        return env
    pw_path = keys_dir(data_dir) / NODE_PASSWORD_FILE
    if pw_path.exists():
        return pw_path.read_text().strip()
    if not create:
        raise KeystoreError(f"no password for the node key: set {NODE_PASSWORD_ENV}")
    pw_path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(pw_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def ensure_node_account(
    data_dir: Path, password: str | None = None, scrypt_n: int | None = None
) -> LocalAccount:
    """Load the node account, creating the key (and a dev password file) on first use."""
    path = keys_dir(data_dir) / NODE_KEY_FILE
    if path.exists():
        return read_key_file(path, _node_password(data_dir, password, create=False))
    return generate_key_file(path, _node_password(data_dir, password, create=True), scrypt_n)


def load_node_account(data_dir: Path, password: str | None = None) -> LocalAccount:
    """The node's signing account from the data directory's keystore."""
    path = keys_dir(data_dir) / NODE_KEY_FILE
    if not path.exists():
        raise KeystoreError(f"no node key in {keys_dir(data_dir)}: run `pacsmesh ledger deploy`")
    return read_key_file(path, _node_password(data_dir, password, create=False))
