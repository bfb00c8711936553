"""A hospital node set up for AI-training access: the embedded chain, patients who link their
ledger identity and sign grants, an administrator who stores studies, and the training
credential, all through the node's real routes and the real consent registry."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import pydicom
from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydicom.dataset import Dataset

from ledger.consent import ALL_MEMBERS, Purpose
from node.services.deid import UidMapper
from node.services.patient_links import sign_link
from node.services.training import load_uid_key
from tests.node.authhelpers import account_token
from tests.node.consent_helpers import (
    HOSPITAL_A,
    ConsentNode,
    make_consortium,
    serve_consent_node,
    signed_grant,
)

ISSUER = "HOSP-A"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class TrainingSite:
    """One node with auth on, its administrator and its training credential."""

    node: ConsentNode
    admin: dict[str, str]
    trainer: dict[str, str]
    patients: dict[str, LocalAccount] = field(default_factory=dict)

    @property
    def dicomweb(self) -> str:
        return f"{self.node.url}/dicom-web"

    @property
    def mapper(self) -> UidMapper:
        """The node's own UID mapping (what the training credential sees)."""
        return UidMapper(load_uid_key(self.node.archive.settings.deid_uid_key_path))

    def store(self, datasets: list[Dataset]) -> None:
        """STOW-RS as the administrator."""
        self.node.stow([copy.deepcopy(ds) for ds in datasets])

    def link(self, mrn: str, issuer: str = ISSUER) -> LocalAccount:
        """A patient registered at the hospital links the ledger key they hold."""
        patient: LocalAccount = Account.create()
        patient_id = self.node.add_patient(mrn=mrn, issuer=issuer, name="Doe^Jane")
        signed = sign_link(patient, HOSPITAL_A, mrn, issuer)
        reply = self.node.post(f"Patient/{patient_id}/$link", signed.to_parameters())
        assert reply.status_code == 200, reply.text
        self.patients[mrn] = patient
        return patient

    def grant(
        self,
        mrn: str,
        purpose: Purpose = Purpose.AI_TRAINING,
        study_uid: str | None = None,
        *,
        all_members: bool = False,
        revoke: bool = False,
    ) -> None:
        """The patient signs a grant (or revocation); the node relays it; the cache syncs."""
        link = self.node.ledger
        grantee = ALL_MEMBERS if all_members else link.account
        signed = signed_grant(
            link.consent, self.patients[mrn], grantee, purpose, study_uid, revoke=revoke
        )
        link.consent.relay(signed)
        link.cache.sync()

    def get(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        """A DICOMweb GET as the training credential (or with the headers given)."""
        url = path if path.startswith("http") else f"{self.dicomweb}/{path.lstrip('/')}"
        return httpx.get(url, headers=headers or self.trainer, timeout=120, **kw)

    def search(self, path: str, **params: str) -> list[dict[str, Any]]:
        """A QIDO-RS search as the training credential (204 is an empty list)."""
        r = self.get(path, params=params)
        assert r.status_code in (200, 204), r.text
        return list(r.json()) if r.status_code == 200 else []

    def retrieve(self, path: str) -> list[bytes]:
        """WADO-RS instances as the training credential: each part's Part-10 bytes."""
        r = self.get(path, headers={**self.trainer, "Accept": 'multipart/related; '
                                    'type="application/dicom"; transfer-syntax=*'})  # fmt: skip
        assert r.status_code == 200, r.text
        return multipart_parts(r.headers["content-type"], r.content)


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related response (RFC 2387)."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    return [part.get_payload(decode=True) for part in message.iter_parts()]


def parse(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@contextmanager
def training_site(data_dir: Path, **settings: Any) -> Iterator[TrainingSite]:
    """A node on the embedded chain (founding member hosp-a) with auth on."""
    consortium = make_consortium(data_dir / "ledger")
    with serve_consent_node(data_dir, consortium, auth_enabled=True, **settings) as node:
        settings = node.archive.settings
        admin = bearer(account_token(settings, "root", "admin", 3600).access_token)
        trainer = account_token(settings, "trainer-1", "trainer", 3600)
        node.headers = admin
        yield TrainingSite(node, admin, bearer(trainer.access_token))
