"""The encrypted archive: sealing, tamper evidence, keys, rotation, crash leftovers."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node.errors import BlobIntegrityError, KeyEncryptionKeyError
from node.services.archive import Archive
from node.services.delete import delete_instances
from node.services.retrieve import read_instance, resolve
from node.services.store import store_bytes
from node.settings import NodeSettings
from node.storage.crypto import (
    HEADER_BYTES,
    SEGMENT_BYTES,
    BlobReader,
    EncryptingWriter,
    blob_aad,
    create_secret_file,
    load_or_create_secret,
    new_key,
    replace_secret_file,
)
from tests.conftest import REPO_ROOT
from tests.node.factories import make_ct, to_bytes


def _seal(data: bytes, key: bytes, aad: bytes, chunk: int = 100_000) -> bytes:
    out = io.BytesIO()
    w = EncryptingWriter(out, key, aad)
    for i in range(0, len(data), chunk):
        w.write(data[i : i + chunk])
    w.close()
    return out.getvalue()


@pytest.mark.parametrize(
    "size", [0, 1, SEGMENT_BYTES - 1, SEGMENT_BYTES, SEGMENT_BYTES + 1, 3 * SEGMENT_BYTES + 7]
)
def test_sealed_stream_round_trips_and_reads_any_range(size: int) -> None:
    key, data = new_key(), os.urandom(size)
    sealed = _seal(data, key, b"uid")
    # A needle under 16 bytes turns up in random ciphertext by chance (1 byte: ~6 % of runs).
    assert data[:64] not in sealed[HEADER_BYTES:] or size < 16
    reader = BlobReader(io.BytesIO(sealed), key, b"uid")
    assert reader.size == size and reader.read_all() == data
    f = reader.as_file()
    f.seek(size // 3)
    assert f.read(5000) == data[size // 3 : size // 3 + 5000]


def test_any_tampering_is_detected() -> None:
    key, data = new_key(), os.urandom(2 * SEGMENT_BYTES + 100)
    sealed = _seal(data, key, b"uid")
    seg = SEGMENT_BYTES + 16
    variants = {
        "flipped bit": sealed[:5000] + bytes([sealed[5000] ^ 1]) + sealed[5001:],
        "truncated to whole segments": sealed[: HEADER_BYTES + seg],
        "segments swapped": sealed[:HEADER_BYTES]
        + sealed[HEADER_BYTES + seg : HEADER_BYTES + 2 * seg]
        + sealed[HEADER_BYTES : HEADER_BYTES + seg]
        + sealed[HEADER_BYTES + 2 * seg :],
        "extended": sealed + sealed[HEADER_BYTES : HEADER_BYTES + seg],
    }
    for name, blob in variants.items():
        with pytest.raises(BlobIntegrityError):
            BlobReader(io.BytesIO(blob), key, b"uid").read_all()
            pytest.fail(f"{name} was not detected")
    with pytest.raises(BlobIntegrityError):  # the same blob under another instance's UID
        BlobReader(io.BytesIO(sealed), key, b"other-uid").read_all()


def _settings(tmp_path: Path, **kw: object) -> NodeSettings:
    return NodeSettings(data_dir=tmp_path / "data", **kw)  # type: ignore[arg-type]


def test_fresh_archive_key_file_is_private_and_blobs_are_bound_to_their_instance(
    tmp_path: Path,
) -> None:
    archive = Archive.open(_settings(tmp_path))
    key_file = tmp_path / "data" / "keys" / "kek.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    a, b = make_ct(seed=1), make_ct(seed=2)
    store_bytes(archive, to_bytes(a))
    store_bytes(archive, to_bytes(b))
    row_a = resolve(archive, a.StudyInstanceUID)[0]
    row_b = resolve(archive, b.StudyInstanceUID)[0]
    # Swap the two blobs on disk: each read must fail, never return the other's data.
    pa, pb = archive.blobs.path_of(row_a.blob_name), archive.blobs.path_of(row_b.blob_name)
    tmp = pa.with_suffix(".swap")
    os.replace(pa, tmp)
    os.replace(pb, pa)
    os.replace(tmp, pb)
    for row in (row_a, row_b):
        with pytest.raises(BlobIntegrityError):
            read_instance(archive, row)
    archive.close()


def test_wrong_or_missing_key_fails_start_up_clearly(tmp_path: Path) -> None:
    archive = Archive.open(_settings(tmp_path))
    store_bytes(archive, to_bytes(make_ct(seed=3)))
    archive.close()
    key_file = tmp_path / "data" / "keys" / "kek.key"
    saved = key_file.read_bytes()
    other = tmp_path / "other.key"
    from node.storage.crypto import write_key_file

    write_key_file(other, new_key())
    with pytest.raises(KeyEncryptionKeyError, match="wrong key-encryption key"):
        Archive.open(_settings(tmp_path, kek_source=f"file:{other}"))
    key_file.unlink()
    with pytest.raises(KeyEncryptionKeyError, match="missing"):
        Archive.open(_settings(tmp_path))
    key_file.write_bytes(saved)
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyEncryptionKeyError, match="readable by others"):
        Archive.open(_settings(tmp_path))
    os.chmod(key_file, 0o600)
    Archive.open(_settings(tmp_path)).close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_rotate_key_rewraps_keys_and_retires_the_old_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    archive = Archive.open(settings)
    ds = make_ct(seed=4)
    data = to_bytes(ds)
    store_bytes(archive, data)
    row = resolve(archive, ds.StudyInstanceUID)[0]
    blob_before = archive.blobs.path_of(row.blob_name).read_bytes()
    archive.close()
    old_key = tmp_path / "old.key"
    shutil.copy2(tmp_path / "data" / "keys" / "kek.key", old_key)

    result = _cli("node", "rotate-key", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert '"kek_id"' in result.stdout

    archive = Archive.open(settings)
    assert read_instance(archive, resolve(archive, ds.StudyInstanceUID)[0]) == data
    # Blobs were not re-encrypted: only the DEK wrapping changed.
    assert archive.blobs.path_of(row.blob_name).read_bytes() == blob_before
    archive.close()
    with pytest.raises(KeyEncryptionKeyError, match="wrong key-encryption key"):
        Archive.open(_settings(tmp_path, kek_source=f"file:{old_key}"))


def test_serve_refuses_a_wrong_key_with_a_message(tmp_path: Path) -> None:
    Archive.open(_settings(tmp_path)).close()
    other = tmp_path / "other.key"
    from node.storage.crypto import write_key_file

    write_key_file(other, new_key())
    result = _cli(
        "node", "serve", "--data-dir", str(tmp_path / "data"), "--kek-source", f"file:{other}"
    )
    assert result.returncode == 2
    assert "wrong key-encryption key" in result.stderr
    assert "Traceback" not in result.stderr


def test_start_up_removes_crash_leftovers(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    archive = Archive.open(settings)
    ds = make_ct(seed=5)
    store_bytes(archive, to_bytes(ds))
    # A crash mid-write leaves a temp file; a crash between rename and commit, a blob the
    # index does not know.
    (archive.blobs.tmp_dir / "deadbeef.part").write_bytes(b"x" * 100)
    pending = archive.blobs.begin(new_key(), blob_aad("1.2.3"))
    pending.write(b"y" * 1000)
    orphan = pending.commit()
    archive.close()

    archive = Archive.open(settings)
    report = archive.reconcile_report
    assert report is not None
    assert (report.temp_files_removed, report.orphan_blobs_removed) == (1, 1)
    assert not any(archive.blobs.tmp_dir.iterdir())
    assert not archive.blobs.path_of(orphan).exists()
    assert read_instance(archive, resolve(archive, ds.StudyInstanceUID)[0]) == to_bytes(ds)
    archive.close()


def test_deleting_the_last_instance_shreds_the_study_key(tmp_path: Path) -> None:
    archive = Archive.open(_settings(tmp_path))
    ds = make_ct(seed=6)
    store_bytes(archive, to_bytes(ds))
    row = resolve(archive, ds.StudyInstanceUID)[0]
    result = delete_instances(archive, ds.StudyInstanceUID)
    assert result.studies_shredded == [ds.StudyInstanceUID]
    with archive.engine.connect() as conn:
        assert archive.keys.get(conn, ds.StudyInstanceUID) is None
    assert not archive.blobs.path_of(row.blob_name).exists()
    archive.close()


def test_a_second_process_cannot_open_a_data_directory_in_use(tmp_path: Path) -> None:
    from node.errors import StorageError

    archive = Archive.open(_settings(tmp_path))
    with pytest.raises(StorageError, match="in use"):
        Archive.open(_settings(tmp_path))
    archive.close()


def test_a_secret_file_is_created_once_private_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    assert create_secret_file(path, b"first") == b"first"
    # A second creator (another process racing the first) gets the existing secret.
    assert create_secret_file(path, b"second") == b"first"
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]  # no temp file left


def test_a_private_file_is_replaced_whole_and_stays_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "out" / "training.token"
    path.parent.mkdir()
    path.write_text("old token\n")
    path.chmod(0o644)
    replace_secret_file(path, b"new token\n")
    assert path.read_bytes() == b"new token\n"
    # The file is a new one, owner-only from its creation, whatever the old one's mode was.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["training.token"]


def test_a_random_secret_is_made_once_and_a_damaged_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "pseudonym.key"
    first = load_or_create_secret(path, "audit pseudonym key", max_bytes=32)
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path, "audit pseudonym key", max_bytes=32) == first
    path.write_bytes(first + b"\n")  # an edit: pseudonyms under it would no longer link
    with pytest.raises(ValueError, match=r"audit pseudonym key .* is longer than 32 bytes"):
        load_or_create_secret(path, "audit pseudonym key", max_bytes=32)
    path.write_bytes(first[:8])
    with pytest.raises(ValueError, match="is shorter than 32 bytes"):
        load_or_create_secret(path, "audit pseudonym key", max_bytes=32)
