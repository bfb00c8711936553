"""Auth on a real node process (auth_enabled): sign-in, DICOMweb per role, the user CLI live."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from ledger.audit_log import AuditLog
from node.auth.tokens import NodeTokens
from node.services.audit import AUDIT_DB_FILE
from node.settings import load_settings
from node.storage.db import alembic_config, create_index_engine, open_index
from tests.conftest import REPO_ROOT
from tests.node.conftest import RunningNode, start_node
from tests.node.factories import make_ct, to_bytes
from tests.node.opshelpers import multipart_body, split_multipart, wado_instance

ISSUER = "https://pacs.hospital-a.test"
PASSWORD = "correct horse battery staple"
ENV = {"NODE_AUTH_ENABLED": "true", "NODE_TOKEN_ISSUER": ISSUER}


def cli(node: RunningNode, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`pacsmesh node user ...` in its own process, beside the running node."""
    return node_cli(node, "user", *args, stdin=stdin)


def node_cli(node: RunningNode, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`pacsmesh node ...` in its own process, beside the running node."""
    cmd = [sys.executable, "-m", "node.cli", "node", *args, "--data-dir", str(node.data_dir)]
    if node.database_url:
        cmd += ["--database-url", node.database_url]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **ENV}
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120)


def cli_token(node: RunningNode, name: str, *extra: str) -> dict[str, str]:
    done = cli(node, "token", name, *extra)
    assert done.returncode == 0, done.stderr
    return {"Authorization": f"Bearer {done.stdout.strip()}"}


def login(node: RunningNode, username: str, password: str, **extra: str) -> httpx.Response:
    form = {"grant_type": "password", "username": username, "password": password, **extra}
    return httpx.post(f"{node.url}/auth/token", data=form, timeout=30)


def sign_in(node: RunningNode, username: str, role: str) -> httpx.Response:
    """Add an account with a password, then sign in with it: the token endpoint's answer."""
    added = cli(node, "add", username, "--role", role, "--password-stdin", stdin=PASSWORD)
    assert added.returncode == 0, added.stderr
    return login(node, username, PASSWORD)


@pytest.fixture
def auth_node(database_url: str, tmp_path: Path) -> Iterator[RunningNode]:
    """A node with auth enabled, over SQLite and PostgreSQL."""
    running = start_node(tmp_path / "node", database_url, env=ENV)
    yield running
    running.stop()


def test_dicomweb_is_closed_without_a_token_and_open_to_a_clinician(
    auth_node: RunningNode,
) -> None:
    node = auth_node
    r = sign_in(node, "alice", "clinician")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    grant = r.json()
    assert grant["token_type"] == "Bearer" and grant["expires_in"] == 900
    assert "user/ImagingStudy.write" in grant["scope"].split()
    bearer = {"Authorization": f"Bearer {grant['access_token']}"}

    ds = make_ct(seed=3)
    body, content_type = multipart_body([to_bytes(ds)])
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    with httpx.Client(timeout=60) as client:
        # Closed: STOW, QIDO and WADO without a token; liveness stays public.
        assert client.get(f"{node.url}/healthz").status_code == 200
        stow = client.post(
            f"{node.dicomweb}/studies", content=body, headers={"Content-Type": content_type}
        )
        assert stow.status_code == 401 and stow.headers["www-authenticate"].startswith("Bearer")
        assert client.get(f"{node.dicomweb}/studies").status_code == 401
        assert wado_instance(client, node.dicomweb, study, series, sop).status_code == 401

        # Open with the clinician's token.
        stow = client.post(
            f"{node.dicomweb}/studies",
            content=body,
            headers={"Content-Type": content_type, **bearer},
        )
        assert stow.status_code == 200, stow.text
        found = client.get(f"{node.dicomweb}/studies", headers=bearer)
        assert found.status_code == 200
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [study]
        client.headers.update(bearer)
        wado = wado_instance(client, node.dicomweb, study, series, sop)
        assert wado.status_code == 200
        assert split_multipart(wado.headers["content-type"], wado.content) == [to_bytes(ds)]

    # Wrong password and unknown user: the same answer, naming neither.
    wrong = login(node, "alice", "not the password at all")
    unknown = login(node, "mallory", PASSWORD)
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert r.json() == {
            "error": "invalid_grant",
            "error_description": "invalid username or password",
        }

    # The route x role matrix of docs/security-auth.md, with tokens the CLI prints.
    for name, role, extra in (
        ("rad", "radiologist", []),
        ("aud", "auditor", []),
        ("adm", "admin", []),
        ("pat", "patient", ["--patient", "MRN-1"]),
    ):
        assert cli(node, "add", name, "--role", role, *extra).returncode == 0
    expected_qido = {"alice": 200, "rad": 200, "adm": 200, "aud": 403, "pat": 403}
    tokens = {name: cli_token(node, name) for name in expected_qido if name != "alice"}
    tokens["alice"] = bearer
    for name, status in expected_qido.items():
        r = httpx.get(f"{node.dicomweb}/studies", headers=tokens[name], timeout=30)
        assert r.status_code == status, name
    r = httpx.post(
        f"{node.dicomweb}/studies",
        content=body,
        headers={"Content-Type": content_type, **tokens["aud"]},
        timeout=30,
    )
    assert r.status_code == 403
    assert 'scope="user/ImagingStudy.write"' in r.headers["www-authenticate"]
    # Deleting destroys the study's key: administrators only.
    assert httpx.delete(f"{node.dicomweb}/studies/{study}", headers=bearer).status_code == 403
    assert (
        httpx.delete(f"{node.dicomweb}/studies/{study}", headers=tokens["adm"]).status_code == 204
    )


def test_expired_and_foreign_tokens_are_refused_by_the_node(
    tmp_path: Path,
) -> None:
    node = start_node(tmp_path / "node", env=ENV)
    try:
        assert cli(node, "add", "svc", "--role", "admin").returncode == 0
        # The node's own key, as the CLI loads it, but a token that expired an hour ago.
        own = NodeTokens.from_settings(load_settings(data_dir=node.data_dir, token_issuer=ISSUER))
        stale = own.issue(subject="svc", role="admin", ttl_seconds=60, now=time.time() - 3600)
        other = NodeTokens.from_settings(
            load_settings(data_dir=tmp_path / "other", token_issuer="https://pacs.hospital-b.test")
        )
        foreign = other.issue(subject="svc", role="admin", ttl_seconds=60)
        for token, reason in (
            (stale.access_token, "token expired"),
            (foreign.access_token, "token from an untrusted issuer"),
        ):
            r = httpx.get(
                f"{node.dicomweb}/studies",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert r.status_code == 401 and r.json() == {"error": reason}
            assert f'error_description="{reason}"' in r.headers["www-authenticate"]
        # A narrowed service credential (a reader service) reads but cannot write.
        svc = cli_token(node, "svc", "--ttl", "2h", "--scope", "system/ImagingStudy.read")
        # No studies yet: QIDO answers 204 (PS3.18 §8.3.4.4.1): the read was allowed.
        assert httpx.get(f"{node.dicomweb}/studies", headers=svc, timeout=30).status_code == 204
        body, content_type = multipart_body([to_bytes(make_ct(seed=4))])
        r = httpx.post(
            f"{node.dicomweb}/studies",
            content=body,
            headers={"Content-Type": content_type, **svc},
            timeout=30,
        )
        assert r.status_code == 403
    finally:
        node.stop()


def test_removing_or_disabling_an_account_cuts_its_tokens_off_at_once(
    auth_node: RunningNode,
) -> None:
    node = auth_node
    # A signed-in clinician, and a token-only service account with a token the CLI printed.
    assert cli(node, "add", "svc", "--role", "admin").returncode == 0
    svc = cli_token(node, "svc", "--ttl", "8h")
    granted = sign_in(node, "alice", "clinician")
    assert granted.status_code == 200, granted.text
    alice = {"Authorization": f"Bearer {granted.json()['access_token']}"}

    def qido(headers: dict[str, str]) -> httpx.Response:
        return httpx.get(f"{node.dicomweb}/studies", headers=headers, timeout=30)

    def refused(headers: dict[str, str], reason: str) -> None:
        r = qido(headers)
        assert r.status_code == 401 and r.json() == {"error": reason}
        assert f'error_description="{reason}"' in r.headers["www-authenticate"]

    for headers in (alice, svc):
        assert qido(headers).status_code == 204  # let through: no studies yet
    # Tokens carry their issue time in whole seconds: what follows happens in a later second.
    issued = time.time()
    while int(time.time()) == int(issued):
        time.sleep(0.05)
    # The CLI changes the accounts in its own process; the node's next request sees it.
    assert cli(node, "disable", "alice").returncode == 0
    assert cli(node, "remove", "svc").returncode == 0
    refused(alice, "token revoked: its account is disabled")
    refused(svc, "token revoked: its account no longer exists")
    # Enabled again: tokens issued before stay dead, a new sign-in works.
    assert cli(node, "enable", "alice").returncode == 0
    before = "token revoked: issued before its account was last enabled or re-created"
    refused(alice, before)
    fresh = login(node, "alice", PASSWORD).json()["access_token"]
    assert qido({"Authorization": f"Bearer {fresh}"}).status_code == 204
    # A new account under a removed one's name does not revive the old account's tokens.
    assert cli(node, "add", "svc", "--role", "admin").returncode == 0
    refused(svc, before)

    # Each refusal is in the audit trail as a failed request by nobody authenticated.
    node.stop()
    log = AuditLog.open(node.data_dir / AUDIT_DB_FILE)
    try:
        events = [json.loads(log.entry(i)) for i in range(log.size())]
    finally:
        log.close()
    queries = [e for e in events if e["event_type"] == "110112"]
    assert [(q["agents"][0]["who"], q["outcome"]) for q in queries] == [
        ("user:alice", 0),
        ("user:svc", 0),
        ("anonymous", 4),
        ("anonymous", 4),
        ("anonymous", 4),
        ("user:alice", 0),
        ("anonymous", 4),
    ]


def test_the_signing_key_rotates_beside_a_live_node(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node", env=ENV)
    try:
        granted = sign_in(node, "alice", "clinician")
        assert granted.status_code == 200, granted.text
        before = {"Authorization": f"Bearer {granted.json()['access_token']}"}
        old_kid = jwt.get_unverified_header(granted.json()["access_token"])["kid"]

        rotated = node_cli(node, "signing-key", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        report = json.loads(rotated.stdout)
        assert report["retired_kid"] == old_kid != report["kid"]

        # The node takes the new key up by itself: its next sign-in is signed with it, the
        # CLI's tokens verify, and a token the old key signed goes on working until it expires.
        fresh = login(node, "alice", PASSWORD).json()["access_token"]
        assert jwt.get_unverified_header(fresh)["kid"] == report["kid"]
        for headers in (before, {"Authorization": f"Bearer {fresh}"}, cli_token(node, "alice")):
            r = httpx.get(f"{node.dicomweb}/studies", headers=headers, timeout=30)
            assert r.status_code == 204
        jwks = httpx.get(f"{node.url}/auth/jwks.json", timeout=30).json()
        assert [k["kid"] for k in jwks["keys"]] == [report["kid"], old_kid]
        retired = node.data_dir / "keys" / "token-signing-retired.json"
        assert b"PRIVATE" not in retired.read_bytes()
    finally:
        node.stop()


def test_user_cli_manages_accounts_while_the_node_runs(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node", env={**ENV, "NODE_LOGIN_MAX_FAILURES": "3"})
    try:
        assert (
            cli(
                node, "add", "bob", "--role", "radiologist", "--password-stdin", stdin=PASSWORD
            ).returncode
            == 0
        )
        listed = cli(node, "list", "--json")
        assert listed.returncode == 0 and '"username": "bob"' in listed.stdout
        assert '"role": "radiologist"' in listed.stdout and "scrypt" not in listed.stdout

        refusals = [
            (cli(node, "add", "bob", "--role", "clinician"), 2, "already exists"),
            (cli(node, "add", "eve", "--role", "superuser"), 2, "unknown role"),
            (cli(node, "add", "pat", "--role", "patient"), 2, "needs --patient MRN"),
            (
                cli(node, "add", "tim", "--role", "clinician", "--password-stdin", stdin="short"),
                2,
                "too short",
            ),
            (cli(node, "token", "nobody"), 1, "no such user"),
            (cli(node, "token", "bob", "--ttl", "30d"), 2, "longer than token_max_ttl_seconds"),
            (cli(node, "token", "bob", "--scope", "user/AuditEvent.read"), 1, "exceeds"),
            (cli(node, "remove", "nobody"), 1, "no such user"),
        ]
        for done, code, message in refusals:
            assert done.returncode == code, (done.args, done.stderr)
            assert message in done.stderr

        # A disabled account can neither sign in nor be handed a token; enabling restores it.
        assert login(node, "bob", PASSWORD).status_code == 200
        assert cli(node, "disable", "bob").returncode == 0
        assert '"disabled": true' in cli(node, "list", "--json").stdout
        assert login(node, "bob", PASSWORD).status_code == 401
        done = cli(node, "token", "bob")
        assert done.returncode == 1 and "disabled" in done.stderr
        assert cli(node, "enable", "bob").returncode == 0
        assert cli_token(node, "bob")["Authorization"].startswith("Bearer ey")
        assert login(node, "bob", PASSWORD).status_code == 200  # also clears the failure count
        # A login may narrow its scopes, never widen them.
        narrow = login(node, "bob", PASSWORD, scope="user/ImagingStudy.read")
        assert narrow.status_code == 200 and narrow.json()["scope"] == "user/ImagingStudy.read"
        for scope in ("user/AuditEvent.read", "openid"):
            r = login(node, "bob", PASSWORD, scope=scope)
            assert r.status_code == 400 and r.json()["error"] == "invalid_scope", scope

        # Throttled after three failures: even the right password waits, with Retry-After.
        for _ in range(3):
            assert login(node, "bob", "wrong password here").status_code == 401
        r = login(node, "bob", PASSWORD)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0

        assert cli(node, "remove", "bob").returncode == 0
        assert "bob" not in cli(node, "list").stdout
        # Malformed requests to the token endpoint get OAuth errors, not 500s.
        r = httpx.post(f"{node.url}/auth/token", json={"username": "x"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"] == "invalid_request"
        r = httpx.post(
            f"{node.url}/auth/token", data={"grant_type": "client_credentials"}, timeout=30
        )
        assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
        key = node.data_dir / "keys" / "token-signing.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        assert b"PRIVATE KEY" not in node.log_path.read_bytes()
    finally:
        node.stop()


def test_users_table_migration_matches_the_model(database_url: str) -> None:
    engine = open_index(database_url)

    def ours(obj: object, name: str | None, type_: str, *_: object) -> bool:
        table = getattr(obj, "table", obj)
        return getattr(table, "name", None) == "node_user" or name == "node_user"

    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"include_object": ours}), SQLModel.metadata
        )
    assert diff == [], f"node_user differs from its migration: {diff}"
    engine.dispose()
    # 0004 goes down and up cleanly.
    cfg = alembic_config(database_url)
    command.downgrade(cfg, "0003")
    engine = create_index_engine(database_url)
    assert "node_user" not in inspect(engine).get_table_names()
    engine.dispose()
    command.upgrade(cfg, "head")
    engine = create_index_engine(database_url)
    assert "node_user" in inspect(engine).get_table_names()
    engine.dispose()
