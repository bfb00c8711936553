"""Helpers for the capture gateway tests: orders in the index, images, dciodvfy."""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlmodel import Session, create_engine

from node.storage.workflow_index import ImagingOrder, Patient

PATIENT = {"name": "Müller^Hans^Peter", "birth_date": "19610305", "sex": "M"}


def add_order(
    database_url: str, accession: str, status: str = "scheduled", **overrides: Any
) -> ImagingOrder:
    """Insert a patient and an imaging order straight into the node's index database."""
    mrn = overrides.pop("patient_mrn", f"MRN-{accession}")
    order = ImagingOrder(
        accession_number=accession,
        patient_mrn=mrn,
        patient_issuer="GENERAL",
        status=status,
        modality="US",
        requested_procedure_id="RP1",
        requested_procedure_description="Ultrasound abdomen",
        procedure_code="USABD",
        procedure_code_system="99PACS",
        procedure_code_meaning="Ultrasound abdomen",
        referring_physician="Doe^Jane",
        **{"study_uid": generate_uid(), **overrides},
    )
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            session.add(
                Patient(
                    mrn=mrn,
                    issuer="GENERAL",
                    name=PATIENT["name"],
                    birth_date=PATIENT["birth_date"],
                    sex=PATIENT["sex"],
                )
            )
            session.add(order)
            session.commit()
            session.refresh(order)
            session.expunge(order)
    finally:
        engine.dispose()
    return order


def png(pixels: npt.NDArray[Any], **save: Any) -> bytes:
    """A PNG of these pixels (mode inferred by Pillow from dtype and shape)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", **save)
    return buffer.getvalue()


def jpeg(pixels: npt.NDArray[Any], quality: int = 90) -> bytes:
    """A baseline JPEG of these pixels."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def gif(pixels: npt.NDArray[Any]) -> bytes:
    """A GIF: an image format the gateway does not take."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "GIF")
    return buffer.getvalue()


def decoded(data: bytes) -> npt.NDArray[Any]:
    """What Pillow decodes a file to (the reference for JPEG inputs)."""
    return np.asarray(Image.open(io.BytesIO(data)))


def _png_file(width: int, height: int, depth: int, colour: int, raw: bytes) -> bytes:
    """A PNG written by hand (PNG §5, §11.2.2), for what Pillow cannot write."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge 8-bit grayscale image (for the size limit)."""
    return _png_file(width, height, 8, 0, b"\x00" * 64)


def deep_colour_png(width: int, height: int) -> bytes:
    """A valid 16-bit-per-channel RGB PNG (filter byte 0 on every row)."""
    row = b"\x00" + bytes(range(6)) * width
    return _png_file(width, height, 16, 2, row * height)


def dciodvfy_errors(ds: Dataset, tmp_path: Path) -> list[str]:
    """Lines of dciodvfy's report that name an error (warnings are allowed)."""
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line]


def studies_with_accession(dicomweb: str, accession: str) -> list[Any]:
    """QIDO-RS studies carrying this accession number (204 means none)."""
    reply = httpx.get(f"{dicomweb}/studies", params={"AccessionNumber": accession})
    if reply.status_code == 204:
        return []
    reply.raise_for_status()
    result: list[Any] = reply.json()
    return result
