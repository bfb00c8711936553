"""FHIR test helpers: a real node on a loopback socket, and a client that validates every
FHIR JSON it receives against the R4B models of fhir.resources."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from fastapi import FastAPI
from fhir.resources.R4B import get_fhir_model_class
from pydicom import Dataset
from sqlalchemy import Engine, insert

from node.app import create_app
from node.services.archive import Archive
from node.settings import NodeSettings
from node.storage.workflow_index import ImagingOrder, Observation, Patient
from tests.node.conftest import free_port
from tests.node.factories import to_bytes
from tests.node.query_fixtures import PG_ADMIN_URL, PG_URL_TEMPLATE

FHIR_JSON = "application/fhir+json"


# R4 "required" code bindings of the elements the node emits. The R4B models check structure
# and datatypes but not bindings, so the helper checks these itself.
_REQUIRED: dict[tuple[str, str], frozenset[str]] = {
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("Patient", "link.type"): frozenset({"replaced-by", "replaces", "refer", "seealso"}),
    ("ServiceRequest", "status"): frozenset(
        {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
    ),
    ("ServiceRequest", "intent"): frozenset(
        {"proposal", "plan", "directive", "order", "original-order", "reflex-order"}
        | {"filler-order", "instance-order", "option"}
    ),
    ("ServiceRequest", "priority"): frozenset({"routine", "urgent", "asap", "stat"}),
    ("ImagingStudy", "status"): frozenset(
        {"registered", "available", "cancelled", "entered-in-error", "unknown"}
    ),
    ("DiagnosticReport", "status"): frozenset(
        {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended"}
        | {"cancelled", "entered-in-error", "unknown"}
    ),
    ("Observation", "status"): frozenset(
        {"registered", "preliminary", "final", "amended", "corrected", "cancelled"}
        | {"entered-in-error", "unknown"}
    ),
    ("Endpoint", "status"): frozenset(
        {"active", "suspended", "error", "off", "entered-in-error", "test"}
    ),
    ("Bundle", "type"): frozenset({"searchset", "history"}),
    ("OperationOutcome", "issue.severity"): frozenset({"fatal", "error", "warning", "information"}),
    ("OperationOutcome", "issue.code"): frozenset(
        {"invalid", "structure", "required", "value", "invariant", "security", "login"}
        | {"unknown", "expired", "forbidden", "suppressed", "processing", "not-supported"}
        | {"duplicate", "multiple-matches", "not-found", "deleted", "too-long", "code-invalid"}
        | {"extension", "too-costly", "business-rule", "conflict", "transient", "lock-error"}
        | {"no-store", "exception", "timeout", "incomplete", "throttled", "informational"}
    ),
    ("CapabilityStatement", "rest.resource.interaction.code"): frozenset(
        {"read", "vread", "update", "patch", "delete", "history-instance", "history-type"}
        | {"create", "search-type"}
    ),
    ("CapabilityStatement", "rest.resource.searchParam.type"): frozenset(
        {"number", "date", "string", "token", "reference", "composite", "quantity", "uri"}
        | {"special"}
    ),
}


def _values_at(node: Any, path: list[str]) -> list[Any]:
    if not path:
        return [node]
    if isinstance(node, list):
        return [v for item in node for v in _values_at(item, path)]
    if isinstance(node, dict) and path[0] in node:
        return _values_at(node[path[0]], path[1:])
    return []


def validate(body: Any) -> Any:
    """Validate a FHIR resource (and every resource nested in a Bundle) with the R4B models,
    plus the required code bindings the models leave unchecked."""
    assert isinstance(body, dict) and "resourceType" in body, body
    model = get_fhir_model_class(body["resourceType"])
    model.model_validate(body)
    for (resource_type, path), allowed in _REQUIRED.items():
        if resource_type == body["resourceType"]:
            for value in _values_at(body, path.split(".")):
                assert value in allowed, f"{resource_type}.{path} = {value!r} is not in R4"
    for entry in body.get("entry", []):
        if "resource" in entry:
            validate(entry["resource"])
    for contained in body.get("contained", []):
        validate(contained)
    return body


@dataclass
class FhirNode:
    """A node app served by uvicorn, with its archive for direct row inserts."""

    url: str
    archive: Archive
    # Sent with every request (a bearer token when the node enforces auth).
    headers: dict[str, str] = field(default_factory=dict)
    app: FastAPI | None = None  # the app being served (to list its routes)

    @property
    def fhir(self) -> str:
        return f"{self.url}/fhir"

    @property
    def engine(self) -> Engine:
        return self.archive.engine

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A FHIR request; every JSON reply must be FHIR JSON that validates."""
        url = path if path.startswith("http") else f"{self.fhir}/{path.lstrip('/')}"
        headers = {**self.headers, **kwargs.pop("headers", {})}
        r = httpx.request(method, url, timeout=60, headers=headers, **kwargs)
        if r.content:
            assert r.headers["content-type"].startswith(FHIR_JSON), r.headers
            validate(r.json())
        return r

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def search(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """A search that must succeed: its searchset Bundle."""
        r = self.get(path, **kwargs)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        assert body["type"] == "searchset"
        return body

    def stow(self, datasets: list[Dataset]) -> None:
        """Store instances through STOW-RS, the way a modality's gateway would."""
        boundary = "pacsmesh-fhir-test-boundary"
        body = b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + to_bytes(ds)
            + b"\r\n"
            for ds in datasets
        )
        body += f"--{boundary}--\r\n".encode()
        r = httpx.post(
            f"{self.url}/dicom-web/studies",
            content=body,
            headers={
                **self.headers,
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text

    def add_patient(self, **values: Any) -> int:
        """Insert a patient row as the ADT listener would; returns its key (the FHIR id)."""
        if values.get("name"):
            values.setdefault("name_search", values["name"].upper())
        with self.engine.begin() as conn:
            key = conn.execute(insert(Patient.__table__).values(**values)).inserted_primary_key  # type: ignore[attr-defined]
        assert key is not None
        return int(key[0])

    def add_order(self, **values: Any) -> None:
        """Insert an imaging order row as the order listener would."""
        with self.engine.begin() as conn:
            conn.execute(insert(ImagingOrder.__table__).values(**values))  # type: ignore[attr-defined]

    def add_observation(self, **values: Any) -> int:
        """Insert a finding row; returns its key."""
        with self.engine.begin() as conn:
            key = conn.execute(
                insert(Observation.__table__).values(**values)  # type: ignore[attr-defined]
            ).inserted_primary_key
        assert key is not None
        return int(key[0])


@contextmanager
def index_database(backend: str) -> Iterator[str | None]:
    """None for the embedded SQLite index, or the URL of a throwaway PostgreSQL database."""
    if backend == "sqlite":
        yield None
        return
    name = f"pacsmesh_fhir_{secrets.token_hex(5)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL_TEMPLATE.format(name=name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def serve_node(
    data_dir: Path, database_url: str | None = None, *, auth_enabled: bool = False
) -> Iterator[FhirNode]:
    """Run the node app on a free loopback port until the block ends (auth off by default:
    the FHIR tests' subject is FHIR; test_auth_matrix.py serves it with auth on)."""
    port = free_port()
    settings = NodeSettings(
        data_dir=data_dir,
        port=port,
        database_url=database_url,
        fsync=False,
        dimse_port=0,
        hl7_port=0,
        auth_enabled=auth_enabled,
    )
    archive = Archive.open(settings)
    app = create_app(settings, archive)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "node did not start"
            time.sleep(0.05)
        yield FhirNode(f"http://127.0.0.1:{port}", archive, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        archive.close()
