"""A real consortium on loopback, built the way hospitals build one: with the `pacsmesh` CLI.

One anvil chain; a consortium CA (`consortium init-ca`); for each hospital a data directory, a
member key (`ledger status`), a TLS key and CSR (`node enroll`), a certificate the CA signs
(`consortium sign-csr`); one `ledger deploy` naming every hospital as a founding member with
its endpoint and certificate fingerprint; the certificates installed (`node enroll --cert`);
then every hospital runs as a
`pacsmesh node serve` process over HTTPS with consortium mutual TLS, bearer tokens on, DIMSE
off, HL7 on a free port (ADT is how a patient record enters a node), stopped by PID. Local
users (admin, clinician, patient, auditor) and their tokens are made with `node user add|token`
when a test first asks for a role's token.

    with running_consortium(tmp_path, ["a", "b", "c"]) as net:
        a = net["a"]
        net.user_client("a", "clinician").get("/dicom-web/studies")
        net.peer_client("b").get(f"{a.url}/network/peer/studies", params=...)

Everything a test does goes through the nodes' real interfaces (HTTPS, MLLP) or the CLI;
the helpers only assemble requests the way a client application would.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from pydicom import Dataset, dcmread

from ledger.chain import Chain, connect
from ledger.consent import ALL_MEMBERS, ConsentClient, Purpose, SignedConsent, study_hash
from ledger.deploy import DEPLOYMENT_FILE, Deployment, load_deployment
from ledger.keystore import read_key_file
from node.auth.tokens import NodeTokens
from node.dicom.multipart import MultipartParser, PartData, PartEnd, PartStart, parse_media_type
from node.services.consent_intake import consent_body
from node.settings import load_settings
from tests.conftest import REPO_ROOT
from tests.ledger.conftest import Anvil, free_port
from tests.node.factories import make_ct, to_bytes
from tests.node.hl7_support import adt, send

ROLES = ("admin", "clinician", "patient", "auditor")
CA_PASSPHRASE = "consortium test CA passphrase"  # test-only; >= 12 characters
PATIENT_PASSWORD = "patient test key password"
STARTUP_SECONDS = 120.0
T = TypeVar("T")


class ConsortiumError(AssertionError):
    """A step of building or driving the consortium failed (with the command's output)."""


@dataclass(frozen=True)
class ClientCert:
    """A TLS client identity: certificate, key, and its SHA-256 fingerprint (hex)."""

    cert: Path
    key: Path
    fingerprint: str


@dataclass
class Hospital:
    """One member hospital: its node process, identities on chain and TLS, and its users."""

    name: str
    hospital_id: str
    data_dir: Path
    config: Path
    port: int
    hl7_port: int
    account: str = ""  # member account (checksummed), from `ledger status`
    fingerprint: str = ""  # SHA-256 of the node certificate, hex
    tokens: dict[str, str] = field(default_factory=dict)  # role -> bearer token, once made
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The endpoint registered on chain (and the base of the node's own URLs)."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ledger_dir(self) -> Path:
        return self.data_dir / "ledger"

    @property
    def tls(self) -> ClientCert:
        """The node certificate it serves with and calls peers with."""
        tls = self.data_dir / "tls"
        return ClientCert(tls / "node.crt", tls / "node.key", self.fingerprint)

    @property
    def log(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    @property
    def issuer(self) -> str:
        """The assigning authority of this hospital's MRNs (PID-3.4)."""
        return f"HOSP-{self.name.upper()}"

    @property
    def patient_mrn(self) -> str:
        """The MRN this hospital's `patient` user is bound to (see `admit_patient`)."""
        return f"{self.name.upper()}-0001"

    def user(self, role: str) -> str:
        """The local user name of a role at this hospital."""
        return f"{role}-{self.name}"


@dataclass
class Patient:
    """A patient: the key they hold (their network identity) and their record at one hospital."""

    hospital: str
    mrn: str
    issuer: str
    patient_id: str  # the FHIR Patient id at that hospital
    key_file: Path
    password_file: Path
    address: str

    def account(self) -> LocalAccount:
        """The patient's key, as their device or portal would unlock it."""
        return read_key_file(self.key_file, PATIENT_PASSWORD)


class Consortium:
    """The running consortium and what tests do with it; see the module docstring."""

    def __init__(
        self,
        root: Path,
        anvil: Anvil,
        hospitals: dict[str, Hospital],
        node_settings: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.anvil = anvil
        self.hospitals = hospitals
        self.node_settings = dict(node_settings or {})
        self.ca_dir = root / "ca"
        self._chain: Chain | None = None

    def __getitem__(self, name: str) -> Hospital:
        return self.hospitals[name]

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def deployment(self) -> Deployment:
        return load_deployment(next(iter(self.hospitals.values())).ledger_dir)

    # -- the command line ------------------------------------------------------------------------

    def cli(self, *args: str | Path, check: bool = True, stdin: str | None = None) -> str:
        """Run `pacsmesh ARGS` (this checkout) and return its standard output."""
        return run_cli(self.root, [str(a) for a in args], check=check, stdin=stdin)

    def cli_json(self, *args: str | Path) -> Any:
        """Run `pacsmesh ARGS --json` and parse its output."""
        return json.loads(self.cli(*args, "--json"))

    # -- TLS ---------------------------------------------------------------------------------------

    def client_context(self, name: str | ClientCert) -> ssl.SSLContext:
        """An mTLS context presenting a hospital's node certificate (or any ClientCert)."""
        from node.tls.contexts import client_context

        cert = self.hospitals[name].tls if isinstance(name, str) else name
        return client_context(cert.cert, cert.key, self.ca_cert)

    def user_context(self) -> ssl.SSLContext:
        """What a user's client trusts: the consortium CA, and it presents no certificate."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def peer_client(self, caller: str | ClientCert, timeout: float = 30) -> httpx.Client:
        """An HTTPS client calling as a peer (mutual TLS with the caller's certificate)."""
        return httpx.Client(verify=self.client_context(caller), timeout=timeout)

    def issue_certificate(self, label: str, ca_dir: Path | None = None) -> ClientCert:
        """A node certificate for 127.0.0.1 that no member registered, signed by the consortium
        CA (or by `ca_dir`, another CA made with `new_ca`), made with enroll + sign-csr."""
        where = self.root / "extra-certs" / label
        self.cli("node", "enroll", "--data-dir", where, "--endpoint", "https://127.0.0.1:1")
        made = self.cli_json(
            "consortium", "sign-csr", where / "tls" / "node.csr", "--ca", ca_dir or self.ca_dir,
            "--out", where / "tls" / "node.crt",
        )  # fmt: skip
        return ClientCert(
            where / "tls" / "node.crt", where / "tls" / "node.key", made["fingerprint"]
        )

    def new_ca(self, label: str) -> Path:
        """Another certificate authority (`consortium init-ca`), not the consortium's."""
        out = self.root / "other-cas" / label
        self.cli("consortium", "init-ca", "--out", out)
        return out

    # -- users and tokens --------------------------------------------------------------------------

    def token(self, name: str, role: str) -> str:
        """The bearer token (2 h) of `role`'s user at a hospital: on first use the user is
        created (`node user add`) and the token printed (`node user token`)."""
        hospital = self.hospitals[name]
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if role not in hospital.tokens:
            add = ["node", "user", "add", hospital.user(role), "--role", role]
            if role == "patient":
                add += ["--patient", hospital.patient_mrn, "--patient-issuer", hospital.issuer]
            self.cli(*add, "--config", hospital.config)
            hospital.tokens[role] = self.issue_token(name, role, ttl="2h")
        return hospital.tokens[role]

    def user_client(
        self, name: str, role: str | None = None, *, token: str | None = None, timeout: float = 60
    ) -> httpx.Client:
        """An HTTPS client for a hospital's node, with a role's token (or `token`, or none)."""
        headers = {}
        bearer = token if token is not None else (self.token(name, role) if role else None)
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return httpx.Client(
            base_url=self.hospitals[name].url,
            headers=headers,
            verify=self.user_context(),
            timeout=timeout,
        )

    def issue_token(self, name: str, role: str, ttl: str = "15m") -> str:
        """A fresh token for a role's user, printed by `node user token`."""
        hospital = self.hospitals[name]
        return self.cli(
            "node", "user", "token", hospital.user(role), "--ttl", ttl, "--config", hospital.config
        ).strip()

    def expired_token(self, name: str, role: str) -> str:
        """A token the hospital's own key signed an hour ago for 15 minutes: long expired.

        Signed with the node's real token key and settings (what `node user token` does, with
        the clock turned back), since the CLI only issues tokens that are valid now.
        """
        hospital = self.hospitals[name]
        settings = load_settings(config_file=hospital.config)
        issued = NodeTokens.from_settings(settings).issue(
            subject=hospital.user(role), role=role, ttl_seconds=900, now=time.time() - 3600
        )
        return issued.access_token

    # -- membership --------------------------------------------------------------------------------

    def remove_member(self, name: str, proposer: str, voters: Sequence[str] = ()) -> int:
        """Remove a hospital by a vote (`consortium propose remove` + `consortium vote`);
        returns the block that executed the removal."""
        chain = self.hospitals[proposer]
        target = self.hospitals[name].account
        rpc = ["--rpc", self.anvil.url]
        proposal = self.cli_json(
            "consortium", "propose", "remove", "--account", target,
            "--data-dir", chain.ledger_dir, *rpc,
        )  # fmt: skip
        for voter in voters:
            if proposal["status"] == "executed":
                break
            proposal = self.cli_json(
                "consortium", "vote", str(proposal["proposal_id"]), "--yes",
                "--data-dir", self.hospitals[voter].ledger_dir, *rpc,
            )  # fmt: skip
        if proposal["status"] != "executed":
            raise ConsortiumError(f"removal of {name} not executed: {proposal}")
        return self.chain.block_number()

    def members(self) -> list[dict[str, Any]]:
        """The registry's members as `consortium list` prints them."""
        first = next(iter(self.hospitals.values()))
        listed = self.cli_json(
            "consortium", "list", "--data-dir", first.ledger_dir, "--rpc", self.anvil.url
        )
        return list(listed["members"])

    # -- studies -----------------------------------------------------------------------------------

    def store_study(
        self, name: str, datasets: Sequence[Dataset], role: str = "clinician"
    ) -> list[str]:
        """STOW-RS the instances to a hospital's node with a role's token; the study UIDs."""
        boundary = f"pacsmesh-{secrets.token_hex(8)}"
        body = b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + to_bytes(ds)
            + b"\r\n"
            for ds in datasets
        )
        body += f"--{boundary}--\r\n".encode()
        with self.user_client(name, role) as client:
            reply = client.post(
                "/dicom-web/studies",
                content=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Accept": "application/dicom+json",
                },
            )
        if reply.status_code != 200:
            raise ConsortiumError(f"STOW-RS at {name}: {reply.status_code} {reply.text}")
        return sorted({str(ds.StudyInstanceUID) for ds in datasets})

    def study_instances(self, name: str, study_uid: str, role: str = "clinician") -> list[Dataset]:
        """The instances a hospital serves for a study over WADO-RS (what a viewer loads)."""
        with self.user_client(name, role) as client:
            reply = client.get(
                f"/dicom-web/studies/{study_uid}",
                headers={"Accept": 'multipart/related; type="application/dicom"'},
            )
        if reply.status_code != 200:
            raise ConsortiumError(f"WADO-RS at {name}: {reply.status_code} {reply.text[:300]}")
        _, params = parse_media_type(reply.headers["content-type"])
        parser = MultipartParser(params["boundary"].encode())
        parts: list[Dataset] = []
        current = bytearray()
        for event in parser.feed(reply.content):
            if isinstance(event, PartStart):
                current = bytearray()
            elif isinstance(event, PartData):
                current += event.data
            elif isinstance(event, PartEnd):
                parts.append(dcmread(io.BytesIO(bytes(current))))
        parser.close()
        return parts

    @staticmethod
    def make_study(
        patient: Patient, instances: int = 2, seed: int = 0, size: int = 64
    ) -> list[Dataset]:
        """A CT study of this patient (their MRN and its issuer), real pydicom data; `size`
        is the matrix (512: a clinical CT slice, 0.5 MB)."""
        from pydicom.uid import generate_uid

        study_uid, series_uid = generate_uid(), generate_uid()
        datasets = []
        for i in range(instances):
            ds = make_ct(
                study_uid, series_uid, patient_id=patient.mrn, patient_name="Test^Patient",
                size=size, seed=seed + i,
            )  # fmt: skip
            ds.IssuerOfPatientID = patient.issuer
            ds.InstanceNumber = i + 1
            datasets.append(ds)
        return datasets

    # -- patients ----------------------------------------------------------------------------------

    def admit_patient(
        self, name: str, mrn: str | None = None, patient_name: str = "Doe^Jane"
    ) -> Patient:
        """Register a patient at a hospital (ADT^A04 over MLLP, as the HIS does) and give them a
        key of their own (`patient keygen`). Default MRN: the one the `patient` user holds."""
        hospital = self.hospitals[name]
        mrn = mrn or hospital.patient_mrn
        control = f"ADT{secrets.token_hex(4)}"
        ack = send(
            hospital.hl7_port,
            adt("A04", control, mrn=mrn, name=patient_name, issuer=hospital.issuer),
        )
        if str(ack.segment("MSA")[1]) != "AA":
            raise ConsortiumError(f"ADT at {name} not accepted: {ack}")
        with self.user_client(name, "admin") as client:
            found = client.get("/fhir/Patient", params={"identifier": f"{hospital.issuer}|{mrn}"})
        entries = found.json().get("entry", []) if found.status_code == 200 else []
        if len(entries) != 1:
            raise ConsortiumError(f"patient not found at {name}: {found.status_code} {found.text}")
        where = self.root / "patients" / f"{name}-{mrn}"
        where.mkdir(parents=True)
        password = where / "password"
        password.write_text(PATIENT_PASSWORD)
        key = self.cli_json("patient", "keygen", "--out", where / "key.json",
                            "--password-file", password)  # fmt: skip
        return Patient(
            name, mrn, hospital.issuer, str(entries[0]["resource"]["id"]),
            where / "key.json", password, key["address"],
        )  # fmt: skip

    def link_patient(self, patient: Patient, role: str = "admin") -> httpx.Response:
        """The patient signs the link of their record to their key (`patient sign-link`) and
        the hospital posts it to `POST /fhir/Patient/{id}/$link`."""
        hospital = self.hospitals[patient.hospital]
        parameters = self.cli(
            "patient", "sign-link", "--key", patient.key_file, "--hospital",
            hospital.hospital_id, "--mrn", patient.mrn, "--issuer", patient.issuer,
            "--password-file", patient.password_file,
        )  # fmt: skip
        with self.user_client(patient.hospital, role) as client:
            return client.post(
                f"/fhir/Patient/{patient.patient_id}/$link",
                content=parameters,
                headers={"Content-Type": "application/fhir+json"},
            )

    # -- cross-hospital exchange (docs/exchange.md) ---------------------------------------------

    def search(self, name: str, patient: Patient | str, role: str = "clinician") -> httpx.Response:
        """`GET /network/studies` at a hospital: the patient's studies across the consortium
        (named by their address: the patient need not be registered there)."""
        address = patient.address if isinstance(patient, Patient) else patient
        with self.user_client(name, role) as client:
            return client.get(
                "/network/studies", params={"patient": address, "purpose": "treatment"}
            )

    def retrieve(
        self,
        name: str,
        study_uid: str,
        patient: Patient,
        source: str,
        role: str = "clinician",
        break_glass: int | None = None,
    ) -> httpx.Response:
        """`POST /network/studies/{uid}/$retrieve` at a hospital, from the `source` hospital."""
        body: dict[str, Any] = {
            "patient": patient.address,
            "source": self.hospitals[source].account,
            "purpose": "treatment",
        }
        if break_glass is not None:
            body["breakGlass"] = {"reason": break_glass}
        with self.user_client(name, role) as client:
            return client.post(f"/network/studies/{study_uid}/$retrieve", json=body)

    # -- consent -----------------------------------------------------------------------------------

    @property
    def chain(self) -> Chain:
        """A read connection to the chain (what a patient's app uses to read nonces)."""
        if self._chain is None:
            self._chain = connect(self.root / "observer", self.anvil.url, account=Account.create())
        return self._chain

    def grantee(self, grantee: str) -> str:
        """A hospital's member account; "all" for every member."""
        return ALL_MEMBERS if grantee == "all" else self.hospitals[grantee].account

    def consent_body(
        self,
        patient: Patient,
        grantee: str,
        purpose: Purpose = Purpose.TREATMENT,
        study_uid: str | None = None,
        *,
        revoke: bool = False,
        signer: LocalAccount | None = None,
    ) -> dict[str, Any]:
        """The Consent a patient's app posts: a grant (or revocation) signed by the patient with
        their next nonce; `signer` signs it instead (a forgery)."""
        client = ConsentClient(self.chain, self.deployment)
        request = client.request(
            patient.address, self.grantee(grantee), purpose, study_hash(study_uid), revoke=revoke
        )
        chain_id, registry = self.chain.chain_id, self.deployment.consent_registry
        if signer is None:
            signed = client.sign(patient.account(), request)
        else:  # the same typed data, signed by a key that is not the patient's
            typed = encode_typed_data(full_message=request.typed_data(chain_id, registry))
            sig = signer.sign_message(typed)
            signed = SignedConsent(
                request, int(sig.v), sig.r.to_bytes(32, "big"), sig.s.to_bytes(32, "big")
            )
        return consent_body(signed, chain_id, registry, patient.patient_id)

    def post_consent(
        self, patient: Patient, body: dict[str, Any], role: str = "patient"
    ) -> httpx.Response:
        """`POST /fhir/Consent` at the patient's hospital (by default with the patient token,
        which is bound to the hospital's `patient_mrn`)."""
        with self.user_client(patient.hospital, role) as client:
            return client.post(
                "/fhir/Consent", json=body, headers={"Content-Type": "application/fhir+json"}
            )

    def grant(
        self,
        patient: Patient,
        grantee: str,
        purpose: Purpose = Purpose.TREATMENT,
        study_uid: str | None = None,
        role: str = "patient",
    ) -> httpx.Response:
        """The patient grants `grantee` (a hospital name or "all") access, through FHIR."""
        body = self.consent_body(patient, grantee, purpose, study_uid)
        return self.post_consent(patient, body, role)

    def revoke(
        self,
        patient: Patient,
        grantee: str,
        purpose: Purpose = Purpose.TREATMENT,
        study_uid: str | None = None,
        role: str = "patient",
    ) -> httpx.Response:
        """The patient revokes a grant (same selectors), through FHIR."""
        body = self.consent_body(patient, grantee, purpose, study_uid, revoke=True)
        return self.post_consent(patient, body, role)

    def revoke_on_chain(
        self,
        patient: Patient,
        grantee: str,
        purpose: Purpose = Purpose.TREATMENT,
        study_uid: str | None = None,
    ) -> int:
        """The patient revokes a grant from their own wallet (a transaction they pay for, no
        hospital relaying it, so no node has synced it yet); returns the block it was mined in."""
        self.anvil.fund(patient.address)
        wallet = connect(self.root / "patient-wallet", self.anvil.url, account=patient.account())
        try:
            ConsentClient(wallet, self.deployment).revoke_direct(
                self.grantee(grantee), purpose, study_hash(study_uid)
            )
            return wallet.block_number()
        finally:
            wallet.close()

    # -- audit -------------------------------------------------------------------------------------

    def audit_events(self, name: str, **params: str | int) -> list[dict[str, Any]]:
        """AuditEvent resources at a hospital (auditor token), newest first."""
        query = {"_count": 200, **params}
        with self.user_client(name, "auditor") as client:
            reply = client.get("/fhir/AuditEvent", params=query)
        if reply.status_code != 200:
            raise ConsortiumError(f"AuditEvent search at {name}: {reply.status_code} {reply.text}")
        return [entry["resource"] for entry in reply.json().get("entry", [])]

    def audit_mark(self, name: str) -> int:
        """The newest audit entry's index now (events after it are `audit_since` the mark)."""
        newest = self.audit_events(name, _count=1)
        return int(newest[0]["id"]) if newest else -1

    def audit_since(self, name: str, mark: int) -> list[dict[str, Any]]:
        """Events recorded after `audit_mark`, without the auditor's own reads of the log."""
        auditor = f"user:{self.hospitals[name].user('auditor')}"
        return [
            e for e in self.audit_events(name) if int(e["id"]) > mark and auditor not in agents(e)
        ]

    def verify_audit(self, names: Sequence[str]) -> tuple[int, dict[str, Any]]:
        """`pacsmesh audit verify --node URL… --json` as an auditor runs it (a directory of
        auditor tokens named by hospital id, the consortium CA, the chain): exit status, report."""
        auditor = self.root / "auditor"
        tokens = auditor / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.hospitals[names[0]].ledger_dir / DEPLOYMENT_FILE, auditor)
        for name in names:
            hospital = self.hospitals[name]
            (tokens / f"{hospital.hospital_id}.token").write_text(self.token(name, "auditor"))
        nodes = [arg for name in names for arg in ("--node", self.hospitals[name].url)]
        done = cli_process(
            self.root,
            [
                "audit", "verify", *nodes, "--token-file", str(tokens),
                "--ca-cert", str(self.ca_cert), "--rpc", self.anvil.url,
                "--data-dir", str(auditor), "--json",
            ],
        )  # fmt: skip
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            raise ConsortiumError(
                f"audit verify exited {done.returncode} without a report: {done.stderr[-2000:]}"
            ) from None
        return done.returncode, report

    # -- lifecycle ---------------------------------------------------------------------------------

    def start_node(self, name: str) -> None:
        """Start a hospital's node from its config file and wait until it answers."""
        hospital = self.hospitals[name]
        hospital.process = serve_node(self.root, hospital.config, hospital.log)
        wait_ready(hospital.process, hospital.url, hospital.log, self.user_context())

    def stop_node(self, name: str) -> None:
        """Stop a hospital's node by PID (graceful, see `stop_process`)."""
        hospital = self.hospitals[name]
        stop_process(hospital.process)
        hospital.process = None

    def stop(self) -> None:
        """Stop every node by PID, then the observer connection (anvil is the caller's)."""
        for name in self.hospitals:
            self.stop_node(name)
        if self._chain is not None:
            self._chain.close()
            self._chain = None


def agents(event: dict[str, Any]) -> list[str]:
    """The `who` identifiers of an AuditEvent's agents."""
    return [a["who"]["identifier"]["value"] for a in event.get("agent", [])]


def refused(event: dict[str, Any]) -> bool:
    """Whether an AuditEvent records a failure (outcome 4, 8 or 12)."""
    return str(event.get("outcome")) != "0"


def entity_refs(event: dict[str, Any]) -> list[str]:
    """The references an AuditEvent's entities carry."""
    return [e["what"]["identifier"]["value"] for e in event.get("entity", [])]


# -- building it -----------------------------------------------------------------------------------


def cli_env(root: Path) -> dict[str, str]:
    """The environment of every `pacsmesh` process: this checkout, no stray NODE_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_", "PACSMESH_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PACSMESH_CA_PASSPHRASE"] = CA_PASSPHRASE
    env["HOME"] = str(root)  # nothing read from or written to the real home directory
    return env


def run_cli(root: Path, args: list[str], *, check: bool = True, stdin: str | None = None) -> str:
    """`python -m node.cli ARGS` (the `pacsmesh` entry point of this checkout)."""
    done = cli_process(root, args, stdin=stdin)
    if check and done.returncode != 0:
        raise ConsortiumError(
            f"pacsmesh {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}"
        )
    return done.stdout


def cli_process(
    root: Path, args: list[str], *, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `pacsmesh ARGS`; the finished process (exit status, output) whatever its status."""
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(root),
        input=stdin,
        timeout=300,
        cwd=root,
    )


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (graceful: the node closes its archive and audit log), SIGKILL after 30 s."""
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def _parallel(items: Iterable[T], work: Callable[[T], object]) -> None:
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        for future in [pool.submit(work, item) for item in items]:
            future.result()


def node_config(hospital: Hospital, rpc: str, **overrides: Any) -> dict[str, Any]:
    """The `[node]` settings a hospital runs with, `overrides` applied (None drops a key)."""
    tls = hospital.data_dir / "tls"
    values: dict[str, Any] = {
        "data_dir": str(hospital.data_dir),
        "host": "127.0.0.1",
        "port": hospital.port,
        "tls_cert": str(tls / "node.crt"),
        "tls_key": str(tls / "node.key"),
        "tls_ca_cert": str(tls / "ca.crt"),
        # Users connect without certificates; peer routes demand one (PeerDep).
        "tls_client_cert": "optional",
        "dimse_port": 0,
        "hl7_port": hospital.hl7_port,
        "ae_title": hospital.hospital_id.upper(),
        "hl7_facility": hospital.issuer,
        "fsync": False,  # throwaway data; the durability path has its own tests
        "ledger_rpc": rpc,
        "ledger_consent_refresh_seconds": 0.5,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def config_toml(values: dict[str, Any]) -> str:
    """A node config file holding `values` under `[node]`."""
    lines = ["[node]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def serve_node(root: Path, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start `pacsmesh node serve --config CONFIG` (this checkout), its output into `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(root),
            cwd=root,
        )


def wait_ready(
    process: subprocess.Popen[bytes], url: str, log: Path, verify: ssl.SSLContext | bool
) -> None:
    """Wait until the node at `url` answers /healthz; its log's tail if it exits or hangs."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            raise ConsortiumError(
                f"node at {url} exited {process.returncode}: {log.read_text()[-3000:]}"
            )
        try:
            reply = httpx.get(f"{url}/healthz", verify=verify, timeout=5)
            if reply.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise ConsortiumError(
                f"node at {url} not ready in {STARTUP_SECONDS:.0f} s: {log.read_text()[-3000:]}"
            )
        time.sleep(0.2)


@contextmanager
def running_consortium(
    root: Path,
    names: Sequence[str] = ("a", "b", "c"),
    anvil: Anvil | None = None,
    node_settings: dict[str, Any] | None = None,
) -> Iterator[Consortium]:
    """Build and start a consortium of `names` under `root`; stop every node afterwards.

    With `anvil`, its chain is used (and left running); otherwise one is started and stopped.
    `node_settings` override every node's config (`node_config`), e.g. {"fsync": True}.
    """
    with ExitStack() as stack:
        if anvil is None:
            anvil = Anvil().start()
            stack.callback(anvil.stop)
        hospitals = {
            n: Hospital(
                name=n,
                hospital_id=f"hosp-{n}",
                data_dir=root / f"node-{n}",
                config=root / f"node-{n}.toml",
                port=free_port(),
                hl7_port=free_port(),
            )
            for n in names
        }
        consortium = Consortium(root, anvil, hospitals, node_settings)
        stack.callback(consortium.stop)
        _build(consortium)
        yield consortium


def _build(consortium: Consortium) -> None:
    rpc = consortium.anvil.url
    cli, cli_json = consortium.cli, consortium.cli_json
    hospitals = list(consortium.hospitals.values())
    cli("consortium", "init-ca", "--out", consortium.ca_dir)
    issued: dict[str, Path] = {}

    def identities(h: Hospital) -> None:
        # The member key (created on first use, dev password file beside it), funded by the
        # test chain's operator; then the node's TLS key and CSR, and the CA's signature.
        h.account = cli_json("ledger", "status", "--data-dir", h.ledger_dir, "--rpc", rpc)[
            "node_account"
        ]
        consortium.anvil.fund(h.account)
        cli("node", "enroll", "--data-dir", h.data_dir, "--endpoint", h.url)
        issued[h.name] = h.data_dir / "issued.crt"
        signed = cli_json(
            "consortium", "sign-csr", h.data_dir / "tls" / "node.csr", "--ca", consortium.ca_dir,
            "--out", issued[h.name],
        )  # fmt: skip
        h.fingerprint = signed["fingerprint"]

    _parallel(hospitals, identities)

    first, others = hospitals[0], hospitals[1:]
    founders = [f"{h.hospital_id},{h.account},{h.url},{h.fingerprint}" for h in others]
    cli_json(
        "ledger", "deploy", "--data-dir", first.ledger_dir, "--rpc", rpc,
        "--hospital-id", first.hospital_id, "--endpoint", first.url,
        "--tls-fingerprint", first.fingerprint, "--voting-period", "3600",
        *[arg for spec in founders for arg in ("--founder", spec)],
    )  # fmt: skip
    for h in others:
        shutil.copy(first.ledger_dir / DEPLOYMENT_FILE, h.ledger_dir / DEPLOYMENT_FILE)

    def install_and_start(h: Hospital) -> None:
        # The deployment registered the fingerprint and endpoint already: enroll installs the
        # certificate and finds it registered (no vote needed).
        enrolled = cli_json(
            "node", "enroll", "--data-dir", h.data_dir, "--endpoint", h.url,
            "--cert", issued[h.name], "--ca-cert", consortium.ca_cert, "--rpc", rpc,
        )  # fmt: skip
        if enrolled["status"] != "registered":
            raise ConsortiumError(f"{h.name}: certificate not registered: {enrolled}")
        h.config.write_text(config_toml(node_config(h, rpc, **consortium.node_settings)))
        consortium.start_node(h.name)

    _parallel(hospitals, install_and_start)
