"""`pacsmesh demo`: one node on loopback with real and generated studies, and URLs to try."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import typer
import uvicorn
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from node.app import create_app
from node.auth.tokens import NodeTokens
from node.auth.users import add_user, get_user
from node.dicom.multipart import Framing
from node.errors import NotFoundError
from node.services.archive import Archive
from node.settings import NodeSettings

DEMO_USER = "demo-clinician"
DEMO_TOKEN_TTL = 8 * 3600


def generated_studies(count: int = 3, per_series: int = 4) -> list[bytes]:
    """Small synthetic CT studies with obviously fake patients."""
    rng = np.random.default_rng(2024)
    out = []
    for s in range(count):
        # Deterministic UIDs: running the demo twice re-sends identical instances (accepted,
        # not duplicated) instead of piling up new studies.
        study = generate_uid(entropy_srcs=["pacsmesh-demo-study", str(s)])
        series = generate_uid(entropy_srcs=["pacsmesh-demo-series", str(s)])
        for i in range(per_series):
            ds = Dataset()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
            meta.MediaStorageSOPInstanceUID = generate_uid(
                entropy_srcs=["pacsmesh-demo-instance", str(s), str(i)]
            )
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = (
                meta.MediaStorageSOPClassUID,
                meta.MediaStorageSOPInstanceUID,
            )
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.PatientID, ds.PatientName = f"DEMO-{s + 1:03d}", f"Demo^Patient{s + 1}"
            ds.StudyDate, ds.StudyTime = f"2024{s + 1:02d}15", "093000"
            ds.AccessionNumber, ds.Modality = f"DEMOACC{s + 1}", "CT"
            ds.StudyDescription = "Synthetic demo CT"
            ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
            ds.Rows = ds.Columns = 128
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
            ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            yy, xx = np.mgrid[:128, :128]
            disc = ((yy - 64) ** 2 + (xx - 64) ** 2 < (30 + 5 * i) ** 2) * 1500
            noise = rng.integers(0, 200, (128, 128))
            ds.PixelData = (disc + noise).astype(np.uint16).tobytes()
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out.append(buf.getvalue())
    return out


def _stow(root: str, files: list[bytes], token: str) -> httpx.Response:
    framing = Framing()
    body = framing.body((framing.part_type, f) for f in files)
    headers = {
        "Content-Type": framing.content_type,
        "Authorization": f"Bearer {token}",
    }
    return httpx.post(f"{root}/studies", content=body, headers=headers, timeout=300)


def _load(root: str, shared: Path, token: str) -> list[str]:
    """Load the samples through STOW-RS, like any modality or archive would."""
    files = [p.read_bytes() for p in sorted((shared / "data").glob("*.dcm"))]
    files += generated_studies()
    r = _stow(root, files, token)
    if r.status_code not in (200, 202):
        raise RuntimeError(f"demo load failed: {r.status_code} {r.text[:200]}")
    headers = {"Accept": "application/dicom+json", "Authorization": f"Bearer {token}"}
    studies = httpx.get(f"{root}/studies", headers=headers, timeout=30)
    uids = []
    if studies.status_code == 200:
        uids = [s["0020000D"]["Value"][0] for s in studies.json()]
    return uids


def demo_token(settings: NodeSettings, archive: Archive) -> str:
    """A token for the demo's own account (a clinician), created on the first run.

    The node enforces tokens like any other (default deny); the demo account has no password,
    so the only way in is a token printed here or by `pacsmesh node user token`.
    """
    try:
        get_user(archive.engine, DEMO_USER)
    except NotFoundError:
        add_user(archive.engine, DEMO_USER, "clinician")
    issued = NodeTokens.from_settings(settings).issue(
        subject=DEMO_USER, role="clinician", ttl_seconds=DEMO_TOKEN_TTL
    )
    return issued.access_token


def run_demo(shared: Path, data_dir: Path, port: int, once: bool = False) -> None:
    """Serve a node and load the demo data; with `once`, load, check and stop."""
    settings = NodeSettings(data_dir=data_dir, port=port, dimse_port=0, hl7_port=0)
    archive = Archive.open(settings)
    token = demo_token(settings, archive)
    app = create_app(settings, archive)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=port, log_level="warning", access_log=False)
    )
    root = f"{settings.base_url}/dicom-web"
    failure: list[BaseException] = []

    def loader() -> None:
        try:
            while not server.started:
                time.sleep(0.05)
            uids = _load(root, shared, token)
            typer.echo(f"\npacsmesh demo node is up: {len(uids)} studies loaded\n")
            typer.echo("  every request needs a token; this one is valid for 8 hours:\n")
            typer.echo(f"  export TOKEN={token}\n")
            auth = '-H "Authorization: Bearer $TOKEN"'
            typer.echo(
                f"  studies (QIDO-RS):   curl {auth} -H 'Accept: application/dicom+json' "
                f"{root}/studies"
            )
            if uids:
                typer.echo(f"  one study metadata:  curl {auth} {root}/studies/{uids[0]}/metadata")
                typer.echo(
                    f"  retrieve (WADO-RS):  curl {auth} -H 'Accept: multipart/related; "
                    f'type="application/dicom"; transfer-syntax=*\' {root}/studies/{uids[0]}'
                )
            typer.echo(
                f"  a new token:         NODE_PORT={port} pacsmesh node user token "
                f"{DEMO_USER} --data-dir {data_dir} --ttl 8h"
            )
            typer.echo(f"  API docs:            {settings.base_url}/docs")
            typer.echo(f"  data directory:      {data_dir.resolve()} (encrypted)\n")
            if not once:
                typer.echo("Ctrl-C stops the node.")
        except BaseException as exc:
            failure.append(exc)
        finally:
            if once or failure:
                server.should_exit = True

    thread = threading.Thread(target=loader, daemon=True)
    thread.start()
    try:
        server.run()
    finally:
        thread.join(timeout=5)
        archive.close()
    if failure:
        raise failure[0]
