"""Node test fixtures: real node processes on loopback, over SQLite and PostgreSQL."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from node.services.archive import Archive
from node.services.store import store_bytes
from node.settings import NodeSettings
from tests.conftest import REPO_ROOT
from tests.ports import free_port

PG_ADMIN_URL = os.environ.get("PACSMESH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]
NO_AUTH_ENV = {"NODE_AUTH_ENABLED": "false"}


class PostgresDatabases:
    """Creates throwaway PostgreSQL databases and drops them afterwards."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self) -> str:
        name = f"pacsmesh_test_{secrets.token_hex(6)}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.names.clear()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    """Factory of fresh PostgreSQL databases for the session."""
    dbs = PostgresDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty index database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    dbs: PostgresDatabases = request.getfixturevalue("pg_databases")
    return dbs.create()


@dataclass
class RunningNode:
    """A `pacsmesh node serve` process on loopback."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    database_url: str | None
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed or cleaned."""
        self.process.kill()
        self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_node(
    data_dir: Path,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    port: int | None = None,
    wait: bool = True,
) -> RunningNode:
    """Start a node process and wait until it answers."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-node-{port}.log"
    cmd = [sys.executable, "-m", "node.cli", "node", "serve", "--data-dir", str(data_dir)]
    cmd += ["--port", str(port), *(args or [])]
    # Protocol listeners stay off unless a test asks for them: fixed default ports would
    # collide between the nodes a test run starts.
    for flag in ("--dimse-port", "--hl7-port"):
        if flag not in cmd:
            cmd += [flag, "0"]
    if database_url:
        cmd += ["--database-url", database_url]
    # Auth is off for tests whose subject is not auth (they call the node without tokens);
    # the auth tests pass NODE_AUTH_ENABLED=true, test_auth_matrix.py covers every route.
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **NO_AUTH_ENV, **(env or {})}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    node = RunningNode(proc, data_dir, port, database_url, log_path)
    if wait:
        wait_until_up(node)
    return node


def wait_until_up(node: RunningNode, timeout: float = 60) -> None:
    """Poll /healthz until the node answers (or fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"node exited with {node.process.returncode}:\n{node.log()}")
        try:
            if httpx.get(f"{node.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    node.stop()
    raise RuntimeError(f"node did not start in {timeout}s:\n{node.log()}")


@pytest.fixture
def node(database_url: str, tmp_path: Path) -> Iterator[RunningNode]:
    """A fresh node over each backend (SQLite and PostgreSQL)."""
    running = start_node(tmp_path / "node", database_url)
    yield running
    running.stop()
    # After every test: no plaintext DICOM anywhere in the data directory.
    hits = plaintext_findings(running.data_dir, [b"DICM"])
    assert not hits, "plaintext found on disk: " + "; ".join(hits)


@pytest.fixture
def archive(database_url: str, tmp_path: Path) -> Iterator[Archive]:
    """An archive opened in-process over each backend, for tests of the store path itself."""
    settings = NodeSettings(
        data_dir=tmp_path / "node", database_url=database_url, fsync=False, dimse_port=0, hl7_port=0
    )
    opened = Archive.open(settings)
    yield opened
    opened.close()


def store_concurrently(archive: Archive, parts: list[bytes]) -> list[BaseException]:
    """Store every part at once, each on a thread of its own; what the failed stores raised."""
    raised: list[BaseException] = []

    def store(data: bytes) -> None:
        try:
            store_bytes(archive, data)
        except BaseException as exc:
            raised.append(exc)

    threads = [threading.Thread(target=store, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return raised


def plaintext_findings(data_dir: Path, needles: list[bytes]) -> list[str]:
    """Files under the data directory that contain any plaintext needle."""
    hits = []
    for path in data_dir.rglob("*"):
        if not path.is_file() or path.suffix == ".log":
            continue
        content = path.read_bytes()
        for needle in needles:
            if needle and needle in content:
                hits.append(f"{path.relative_to(data_dir)} contains {needle[:16]!r}")
    return hits


@pytest.fixture
def assert_no_plaintext() -> Iterator[list[tuple[Path, list[bytes]]]]:
    """Register (data_dir, needles); after the test, no file there may contain a needle.

    Needles: the DICM preamble, and samples of pixel data from the files stored.
    """
    checks: list[tuple[Path, list[bytes]]] = []
    yield checks
    for data_dir, needles in checks:
        hits = plaintext_findings(data_dir, [b"DICM", *needles])
        assert not hits, "plaintext found on disk: " + "; ".join(hits)
