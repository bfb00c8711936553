"""`pacsmesh audit …` through its Typer app: offline, and anchored on the embedded chain."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from ledger import merkle
from ledger.audit_cli import audit_app
from ledger.cli import ledger_app
from tests.ledger.conftest import Anvil

runner = CliRunner()
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def event_json(i: int) -> dict[str, Any]:
    return {
        "event_type": "query",
        "action": "E",
        "outcome": "success",
        "recorded": (T0 + timedelta(seconds=i)).isoformat(),
        "agents": [
            {"who": f"user:clinician-{i}@hospital-b", "role": "clinician", "requestor": True}
        ],
        "entities": [{"kind": "patient", "ref": "0x" + f"{i + 1:040x}"}],
        "source": {"node": "hospital-a"},
        "purpose": "treatment",
    }


def audit(*args: str, data_dir: Path, stdin: str | None = None) -> Result:
    return runner.invoke(audit_app, [*args, "--data-dir", str(data_dir)], input=stdin)


def audit_json(*args: str, data_dir: Path, stdin: str | None = None) -> tuple[int, Any]:
    result = audit(*args, "--json", data_dir=data_dir, stdin=stdin)
    return result.exit_code, json.loads(result.stdout)


def write_events(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    return path


def tamper(data_dir: Path, sql: str, *params: Any) -> None:
    with sqlite3.connect(data_dir / "audit.sqlite") as db:
        db.execute(sql, params)


# --- offline ---------------------------------------------------------------------------------


def test_append_from_file_stdin_and_array(tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps(event_json(0)))
    code, out = audit_json("append", "--event", str(one), data_dir=tmp_path)
    assert (code, out["indices"], out["size"]) == (0, [0], 1)
    jsonl = "\n".join(json.dumps(event_json(i)) for i in (1, 2))
    code, out = audit_json("append", "--event", "-", data_dir=tmp_path, stdin=jsonl)
    assert (code, out["indices"]) == (0, [1, 2])
    array = json.dumps([event_json(3), event_json(4)])
    code, out = audit_json("append", "--event", "-", data_dir=tmp_path, stdin=array)
    assert (code, out["indices"], out["size"]) == (0, [3, 4], 5)
    # The printed root is the RFC 6962 root of the canonical events.
    from ledger.audit_events import parse_event

    leaves = [parse_event(event_json(i)).canonical() for i in range(5)]
    assert out["root"] == "0x" + merkle.root(leaves).hex()


def test_bad_events_are_refused_whole_and_without_echoing_them(tmp_path: Path) -> None:
    good, bad = event_json(0), event_json(1)
    bad["entities"] = [{"kind": "patient", "ref": "Jane Roe 1961-04-02"}]
    path = write_events(tmp_path / "events.jsonl", [good, bad])
    result = audit("append", "--event", str(path), data_dir=tmp_path)
    assert result.exit_code == 2
    assert "plaintext identifiers are refused" in result.output
    assert "Jane" not in result.output and "Traceback" not in result.output
    assert (
        not (tmp_path / "audit.sqlite").exists()
        or audit_json("verify", "--offline", data_dir=tmp_path)[1]["size"] == 0
    )

    (tmp_path / "broken.json").write_text('{"event_type": "query",')
    result = audit("append", "--event", str(tmp_path / "broken.json"), data_dir=tmp_path)
    assert result.exit_code == 2 and "neither JSON nor JSON Lines" in result.output
    result = audit("append", "--event", str(tmp_path / "absent.json"), data_dir=tmp_path)
    assert result.exit_code == 2 and "cannot read events" in result.output


def test_prove_and_verify_offline(tmp_path: Path) -> None:
    path = write_events(tmp_path / "e.jsonl", [event_json(i) for i in range(9)])
    assert audit("append", "--event", str(path), data_dir=tmp_path).exit_code == 0
    code, proof = audit_json("prove", "--index", "6", "--offline", data_dir=tmp_path)
    assert code == 0 and proof["verified"] is True and proof["anchored"] is False
    assert proof["size"] == 9 and proof["event"]["entities"][0]["ref"].endswith("7")
    # What an auditor does with the output: check it with nothing but the RFC's algorithm.
    assert merkle.verify_inclusion(
        6,
        9,
        bytes.fromhex(proof["leaf_hash"][2:]),
        [bytes.fromhex(p[2:]) for p in proof["proof"]],
        bytes.fromhex(proof["root"][2:]),
    )
    code, out = audit_json("verify", "--offline", data_dir=tmp_path)
    assert code == 0 and out["ok"] is True and out["unanchored"] == 9
    code, out = audit_json("verify", "--offline", "--require-anchored", data_dir=tmp_path)
    assert code == 1 and out["ok"] is False

    result = audit("prove", "--index", "9", "--offline", data_dir=tmp_path)
    assert result.exit_code == 2 and "no entry 9" in result.output
    result = audit("verify", "--offline", data_dir=tmp_path / "elsewhere")
    assert result.exit_code == 2 and "no audit log" in result.output


# --- anchored on the embedded chain ---------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("node")
    result = runner.invoke(ledger_app, ["deploy", "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, result.output
    yield data_dir


def test_anchor_then_verify_against_the_chain_and_catch_tampering(deployed: Path) -> None:
    path = write_events(deployed / "e.jsonl", [event_json(i) for i in range(12)])
    assert audit("append", "--event", str(path), data_dir=deployed).exit_code == 0
    code, anchored = audit_json("anchor", data_dir=deployed)
    assert code == 0 and anchored["anchored"] is True and anchored["size"] == 12
    code, again = audit_json("anchor", data_dir=deployed)
    assert code == 0 and again["anchored"] is False

    path = write_events(deployed / "f.jsonl", [event_json(i) for i in range(12, 20)])
    assert audit("append", "--event", str(path), data_dir=deployed).exit_code == 0
    code, second = audit_json("anchor", data_dir=deployed)
    assert code == 0 and second["size"] == 20 and second["block_number"] > anchored["block_number"]

    code, out = audit_json("verify", data_dir=deployed)
    assert code == 0, out
    assert (out["anchors_checked"], out["anchored_size"], out["unanchored"]) == (2, 20, 0)

    code, proof = audit_json("prove", "--index", "3", data_dir=deployed)
    assert code == 0 and proof["anchored"] and proof["size"] == 20
    assert proof["root"] == second["root"]

    # An insider rewrites entry 7's outcome in the database: the chain anchors expose it.
    with sqlite3.connect(deployed / "audit.sqlite") as db:
        (body,) = db.execute("SELECT body FROM audit_entries WHERE leaf_index = 7").fetchone()
    forged = bytes(body).replace(b'"outcome":0', b'"outcome":8')
    assert forged != bytes(body)
    tamper(deployed, "UPDATE audit_entries SET body = ? WHERE leaf_index = 7", forged)
    result = audit("verify", data_dir=deployed)
    assert result.exit_code == 1
    assert "entry 7: edited" in result.output
    code, out = audit_json("verify", data_dir=deployed)
    assert code == 1 and out["failing_entries"] == [7]
    assert {f["kind"] for f in out["findings"]} == {"edited", "anchor-mismatch"}
    # The tampered entry's proof no longer reaches the anchored root.
    code, proof = audit_json("prove", "--index", "7", data_dir=deployed)
    assert code == 1 and proof["verified"] is False
    tamper(deployed, "UPDATE audit_entries SET body = ? WHERE leaf_index = 7", bytes(body))

    # Dropping an entry is caught too, and named.
    tamper(deployed, "DELETE FROM audit_entries WHERE leaf_index = 15")
    code, out = audit_json("verify", data_dir=deployed)
    assert code == 1 and out["failing_entries"] == [15]
    assert any(f["kind"] == "missing" and f["index"] == 15 for f in out["findings"])


def test_anchor_without_a_deployment_is_a_clear_error(tmp_path: Path) -> None:
    path = write_events(tmp_path / "e.jsonl", [event_json(0)])
    assert audit("append", "--event", str(path), data_dir=tmp_path).exit_code == 0
    result = audit("anchor", data_dir=tmp_path)
    assert result.exit_code == 2
    assert "NotDeployedError" in result.output and "Traceback" not in result.output
    result = audit("anchor", "--rpc", "ftp://example.invalid", data_dir=tmp_path)
    assert result.exit_code == 2


# --- a real anvil chain, and the log in PostgreSQL ------------------------------------------


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A throw-away PostgreSQL schema; the CLI reaches it through the URL's search_path."""
    import sqlalchemy as sa

    schema = f"audit_cli_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.mark.integration
def test_anchor_and_verify_on_anvil_with_the_log_in_postgresql(
    anvil: Anvil, pg_schema: str, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    from ledger.keystore import ensure_node_account

    data_dir = tmp_path / "node"
    anvil.fund(ensure_node_account(data_dir).address)
    chain = ["--rpc", anvil.url]
    result = runner.invoke(ledger_app, ["deploy", "--data-dir", str(data_dir), *chain])
    assert result.exit_code == 0, result.output
    database = f"{POSTGRES_URL}?options=-csearch_path%3D{pg_schema}"
    db = ["--database", database]

    path = write_events(tmp_path / "a.jsonl", [event_json(i) for i in range(10)])
    code, out = audit_json("append", "--event", str(path), *db, data_dir=data_dir)
    assert code == 0 and out["size"] == 10
    code, first = audit_json("anchor", *chain, *db, data_dir=data_dir)
    assert code == 0 and first["size"] == 10
    path = write_events(tmp_path / "b.jsonl", [event_json(i) for i in range(10, 15)])
    assert audit("append", "--event", str(path), *db, data_dir=data_dir).exit_code == 0
    code, second = audit_json("anchor", *chain, *db, data_dir=data_dir)
    assert code == 0 and second["size"] == 15
    assert not (data_dir / "audit.sqlite").exists()  # the log really lives in PostgreSQL

    code, out = audit_json("verify", *chain, *db, data_dir=data_dir)
    assert code == 0 and out["anchors_checked"] == 2 and out["unanchored"] == 0

    # Swap two anchored events inside PostgreSQL: verify names both.
    engine = sa.create_engine(database)
    with engine.begin() as conn:
        rows: dict[int, bytes] = dict(
            conn.execute(
                sa.text("SELECT leaf_index, body FROM audit_entries WHERE leaf_index IN (2, 11)")
            ).all()
        )
        for index, other in ((2, 11), (11, 2)):
            conn.execute(
                sa.text("UPDATE audit_entries SET body = :b WHERE leaf_index = :i"),
                {"b": rows[other], "i": index},
            )
    engine.dispose()
    code, out = audit_json("verify", *chain, *db, data_dir=data_dir)
    assert code == 1 and out["failing_entries"] == [2, 11]
    assert all(
        "entries 2 and 11 are swapped" in f["detail"]
        for f in out["findings"]
        if f["kind"] == "reordered"
    )


def test_an_unreachable_audit_database_is_a_clear_error(tmp_path: Path) -> None:
    from tests.ledger.conftest import free_port

    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    result = audit("verify", "--offline", "--database", url, data_dir=tmp_path)
    assert result.exit_code == 2
    assert "audit database error (OperationalError)" in result.output
    assert "Traceback" not in result.output
