"""Encrypted key files for node and patient keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ledger.errors import KeystoreError
from ledger.keystore import (
    ensure_node_account,
    generate_key_file,
    key_file_address,
    load_node_account,
    read_key_file,
)


def test_key_file_round_trip_is_encrypted_and_private(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    account = generate_key_file(path, "correct horse", scrypt_n=2**10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert account.key.hex() not in path.read_text()
    assert key_file_address(path) == account.address
    assert read_key_file(path, "correct horse").address == account.address


def test_wrong_password_missing_file_and_overwrite_are_typed_errors(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    generate_key_file(path, "pw", scrypt_n=2**10)
    with pytest.raises(KeystoreError, match="wrong password"):
        read_key_file(path, "not it")
    with pytest.raises(KeystoreError, match="not found"):
        read_key_file(tmp_path / "absent.json", "pw")
    with pytest.raises(KeystoreError, match="overwrite"):
        generate_key_file(path, "pw", scrypt_n=2**10)
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(KeystoreError):
        read_key_file(tmp_path / "garbage.json", "pw")


def test_node_account_is_created_once_and_reloaded(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError):
        load_node_account(tmp_path)
    first = ensure_node_account(tmp_path)
    assert ensure_node_account(tmp_path).address == first.address
    assert load_node_account(tmp_path).address == first.address
    password_file = tmp_path / "keys" / "node.password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
