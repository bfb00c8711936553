"""The DICOM capture gateway: JPEG/PNG captures become Secondary Capture instances of an order.

Devices that cannot make DICOM (ultrasound and endoscopy screen captures, film digitizers) send
their images with the order's accession number. One request becomes one instance of the
multi-frame Secondary Capture IOD matching its pixels (PS3.3 A.8.3 grayscale byte, A.8.4
grayscale word, A.8.5 true colour; one frame or several), carrying the patient and study
attributes of the order, and is stored through the one ingest path (`store_bytes`), so it is
indexed, matched to its order and served like any other instance. Nothing is stored unless the
whole capture is valid. Pixels are kept decoded (Explicit VR Little Endian): exactly the PNG's
values; for JPEG input the decoded values, marked as lossy-compressed (PS3.3 C.7.6.1.1.5).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from sqlmodel import Session, select

from node.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    StorageError,
)
from node.services.archive import Archive
from node.services.capture_pixels import MAX_DECODED_BYTES, DecodedImage, Pixels, decode_image
from node.services.store import (
    REASON_OUT_OF_RESOURCES,
    StoredInstance,
    StoreFailure,
    store_bytes,
)
from node.storage.index import Study
from node.storage.workflow_index import ImagingOrder, Patient

# PS3.4 B.5: the multi-frame Secondary Capture storage SOP classes.
SC_GRAYSCALE_BYTE = "1.2.840.10008.5.1.4.1.1.7.2"
SC_GRAYSCALE_WORD = "1.2.840.10008.5.1.4.1.1.7.3"
SC_TRUE_COLOR = "1.2.840.10008.5.1.4.1.1.7.4"
_SOP_CLASS = {"gray8": SC_GRAYSCALE_BYTE, "gray16": SC_GRAYSCALE_WORD, "rgb": SC_TRUE_COLOR}

# PS3.3 C.8.6.1: Conversion Type defined terms. WSD = workstation (screen capture),
# DF = digitized film, DV = digitized video, DI = digital interface, SD/SI = scanned
# document/image, DRW = drawing, SYN = synthetic image.
CONVERSION_TYPES = ("WSD", "DF", "DV", "DI", "SD", "SI", "DRW", "SYN")
MAX_FRAMES = 10_000
GATEWAY_SERIES_NUMBER = 9000  # keeps captures apart from a modality's own series numbers
SOFTWARE_VERSION = "0.1.0"


class UnknownOrderError(NotFoundError):
    """The capture names an accession number no order has.

    422, not 404: the endpoint exists and the request is well-formed, but what it refers to
    does not (the integrator must fix the accession number, not the URL).
    """

    http_status = 422


class CancelledOrderError(ConflictError):
    """The capture names an order that was cancelled."""


@dataclass(frozen=True)
class CaptureResult:
    """What one capture request stored."""

    stored: StoredInstance
    accession_number: str
    number_of_frames: int


@dataclass(frozen=True)
class _OrderContext:
    order: ImagingOrder
    patient: Patient | None
    study: Study | None  # the study already in the archive, if any


def store_capture(
    archive: Archive,
    accession_number: str,
    images: list[bytes],
    *,
    conversion_type: str = "WSD",
    description: str | None = None,
    pixel_spacing_mm: float | None = None,
) -> CaptureResult:
    """Turn one or more JPEG/PNG files into one SC instance of the order and store it."""
    accession_number = accession_number.strip()
    if not accession_number:
        raise InvalidRequestError("an accession number is required")
    conversion_type = conversion_type.strip().upper()
    if conversion_type not in CONVERSION_TYPES:
        raise InvalidRequestError(f"conversion type must be one of {', '.join(CONVERSION_TYPES)}")
    if not images:
        raise InvalidRequestError("no image files in the request")
    if pixel_spacing_mm is not None and not 0 < pixel_spacing_mm < 1000:
        raise InvalidRequestError("pixel spacing must be a positive number of millimetres")
    context = _load_order(archive, accession_number)
    decoded = [decode_image(data, n) for n, data in enumerate(images, start=1)]
    frames = _combine(decoded)
    spacing = pixel_spacing_mm
    if conversion_type == "DF" and spacing is None:
        # PS3.3 C.8.6.2: Nominal Scanned Pixel Spacing is required for digitized film.
        dpi = decoded[0].dpi
        if dpi is None:
            raise InvalidRequestError(
                "digitized film (DF) needs the scan's pixel spacing: the image declares no "
                "resolution, so give pixel_spacing in millimetres"
            )
        spacing = 25.4 / dpi
    ds = _dataset(context, decoded, frames, conversion_type, description, spacing)
    try:
        stored = store_bytes(archive, _part10(ds))
    except StoreFailure as failure:
        if failure.code == REASON_OUT_OF_RESOURCES:
            raise StorageError(f"capture could not be stored: {failure.reason}") from failure
        raise ConflictError(f"capture could not be stored: {failure.reason}") from failure
    return CaptureResult(stored, accession_number, int(frames.shape[0]))


def _load_order(archive: Archive, accession_number: str) -> _OrderContext:
    with Session(archive.engine) as session:
        order = session.get(ImagingOrder, accession_number)
        if order is None:
            raise UnknownOrderError("no order with that accession number")
        if order.status == "cancelled":
            raise CancelledOrderError("the order with that accession number was cancelled")
        patient = _patient(session, order.patient_mrn, order.patient_issuer)
        study = session.get(Study, order.matched_study_uid or order.study_uid)
    return _OrderContext(order, patient, study)


def _patient(session: Session, mrn: str, issuer: str) -> Patient | None:
    patient: Patient | None = None
    for _ in range(4):  # follow ADT^A40 merges to the surviving record (bounded: no cycles)
        found = session.exec(
            select(Patient).where(Patient.mrn == mrn, Patient.issuer == issuer)
        ).first()
        if found is None:
            return patient
        patient = found
        if not found.merged_into_mrn:
            return found
        mrn = found.merged_into_mrn
    return patient


def _combine(decoded: list[DecodedImage]) -> Pixels:
    """Stack every file's frames into one (frames, rows, columns[, 3]) array."""
    first = decoded[0]
    kinds = {d.kind for d in decoded}
    if "gray16" in kinds and len(kinds) > 1:
        raise InvalidRequestError(
            "16-bit grayscale frames cannot share a capture with 8-bit frames"
        )
    for n, image in enumerate(decoded[1:], start=2):
        if (image.rows, image.columns) != (first.rows, first.columns):
            raise InvalidRequestError(
                f"every frame of a capture must have the same size: file {n} is "
                f"{image.columns}x{image.rows}, file 1 is {first.columns}x{first.rows}"
            )
    frames = [f for image in decoded for f in image.frames]
    if len(frames) > MAX_FRAMES:
        raise PayloadTooLargeError(f"a capture holds at most {MAX_FRAMES} frames")
    if "rgb" in kinds:
        # Grayscale frames in a colour capture become gray RGB pixels (R = G = B).
        frames = [f if f.ndim == 3 else np.repeat(f[:, :, None], 3, axis=2) for f in frames]
    total = sum(int(f.nbytes) for f in frames)
    if total > MAX_DECODED_BYTES:
        raise PayloadTooLargeError(f"capture decodes to more than {MAX_DECODED_BYTES} bytes")
    return np.ascontiguousarray(np.stack(frames))


def _fit(value: str | None, limit: int) -> str:
    """A value cut to its VR's maximum length (PS3.5 §6.2); empty when absent."""
    return (value or "")[:limit]


def _code_item(code: str | None, scheme: str | None, meaning: str | None) -> Dataset | None:
    # PS3.3 Table 8.8-1: a code item needs value, scheme and meaning; short codes only (SH).
    if not (code and scheme and meaning) or len(code) > 16 or len(scheme) > 16:
        return None
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning[:64]
    return item


def _dataset(
    context: _OrderContext,
    decoded: list[DecodedImage],
    frames: Pixels,
    conversion_type: str,
    description: str | None,
    spacing_mm: float | None,
) -> Dataset:
    order, patient, study = context.order, context.patient, context.study
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    kind = decoded[0].kind if len({d.kind for d in decoded}) == 1 else "rgb"
    ds = Dataset()
    # SOP Common (C.12.1)
    ds.SOPClassUID = _SOP_CLASS[kind]
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient (C.7.1.1): from the order system's registration, never from the image.
    ds.PatientName = _fit(patient.name if patient else None, 64 * 5)
    ds.PatientID = _fit(patient.mrn if patient else order.patient_mrn, 64)
    issuer = patient.issuer if patient else order.patient_issuer
    if issuer:
        ds.IssuerOfPatientID = _fit(issuer, 64)
    ds.PatientBirthDate = _fit(patient.birth_date if patient else None, 8)
    ds.PatientSex = _fit(patient.sex if patient else None, 1)
    # General Study (C.7.2.1): the study already archived for this order, if any, else the
    # order's worklist Study Instance UID, so the capture joins the modality's images.
    ds.StudyInstanceUID = order.matched_study_uid or order.study_uid
    ds.StudyDate = study.study_date if study and study.study_date else date
    ds.StudyTime = study.study_time if study and study.study_date else now.strftime("%H%M%S")
    ds.ReferringPhysicianName = _fit(order.referring_physician, 64 * 5)
    ds.StudyID = _fit(study.study_id if study else order.requested_procedure_id, 16)
    ds.AccessionNumber = _fit(order.accession_number, 16)
    study_description = (
        study.study_description if study else None
    ) or order.requested_procedure_description
    if study_description:
        ds.StudyDescription = _fit(study_description, 64)
    procedure = _code_item(
        order.procedure_code, order.procedure_code_system, order.procedure_code_meaning
    )
    if procedure is not None:
        ds.ProcedureCodeSequence = Sequence([procedure])
    # General Series (C.7.3.1)
    ds.Modality = _fit(order.modality, 16) or "OT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = GATEWAY_SERIES_NUMBER
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = _fit(description, 64) or "Secondary capture"
    # C.7.3.1: type 2C, required when the body part may be paired; a capture cannot know it.
    ds.Laterality = ""
    ds.RequestAttributesSequence = Sequence([_request_attributes(order)])
    # General Equipment (C.7.5.1) and SC Equipment (C.8.6.1)
    ds.Manufacturer = "pacsmesh"
    ds.ConversionType = conversion_type
    ds.SecondaryCaptureDeviceManufacturer = "pacsmesh"
    ds.SecondaryCaptureDeviceManufacturerModelName = "pacsmesh capture gateway"
    ds.SecondaryCaptureDeviceSoftwareVersions = SOFTWARE_VERSION
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
    # General Image (C.7.6.1)
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageType = ["DERIVED", "SECONDARY"]
    _lossy_compression(ds, decoded, frames)
    # Image Pixel (C.7.6.3)
    _pixel_module(ds, kind, frames)
    # Multi-frame (C.7.6.6) and SC Multi-frame Image (C.8.6.3)
    count = int(frames.shape[0])
    ds.NumberOfFrames = count
    if count > 1:
        # C.8.6.3: the pointer is only for several frames; they are numbered as pages (one per
        # capture or film sheet), not timed (a capture's frames need not be a cine loop).
        ds.FrameIncrementPointer = Tag("PageNumberVector")
        ds.PageNumberVector = list(range(1, count + 1))
    # Screen captures and film labels carry the patient's details in the pixels.
    ds.BurnedInAnnotation = "YES"
    if spacing_mm is not None:
        ds.NominalScannedPixelSpacing = [f"{spacing_mm:.6g}", f"{spacing_mm:.6g}"]
    if any(not value.isascii() for value in _texts(ds)):
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 names from the order system
    return ds


def _request_attributes(order: ImagingOrder) -> Dataset:
    # PS3.3 Table 10-9 Request Attributes Macro: which order this series fulfils.
    item = Dataset()
    item.AccessionNumber = _fit(order.accession_number, 16)
    item.StudyInstanceUID = order.study_uid
    if order.requested_procedure_id:
        item.RequestedProcedureID = _fit(order.requested_procedure_id, 16)
    if order.requested_procedure_description:
        item.RequestedProcedureDescription = _fit(order.requested_procedure_description, 64)
    code = _code_item(
        order.procedure_code, order.procedure_code_system, order.procedure_code_meaning
    )
    if code is not None:
        item.RequestedProcedureCodeSequence = Sequence([code])
    return item


def _lossy_compression(
    ds: Dataset,
    decoded: list[DecodedImage],
    frames: Pixels,
) -> None:
    # PS3.3 C.7.6.1.1.5: once lossy-compressed, always marked so, even after decoding.
    jpeg = [d for d in decoded if d.source_format == "JPEG"]
    if not jpeg:
        ds.LossyImageCompression = "00"
        return
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    if len(jpeg) == len(decoded):
        ratio = frames.nbytes / max(1, sum(d.encoded_bytes for d in jpeg))
        ds.LossyImageCompressionRatio = f"{ratio:.4g}"


def _pixel_module(ds: Dataset, kind: str, frames: Pixels) -> None:
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.PixelRepresentation = 0
    if kind == "rgb":
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0  # R1G1B1 R2G2B2 ...: as decoded
        bits = 8
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        bits = 16 if kind == "gray16" else 8
        # C.8.6.3: grayscale SC multi-frame images have an identity rescale and presentation.
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.PresentationLUTShape = "IDENTITY"
        if kind == "gray16":
            low, high = int(frames.min()), int(frames.max())
            ds.WindowCenter = f"{(low + high + 1) / 2:g}"
            ds.WindowWidth = str(max(1, high - low + 1))
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    data = frames.astype("<u2" if bits == 16 else np.uint8, copy=False).tobytes()
    if len(data) % 2:
        data += b"\x00"  # PS3.5 §7.1.1: values have even length
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"


def _texts(ds: Dataset) -> list[str]:
    return [
        str(ds.get(k, ""))
        for k in ("PatientName", "ReferringPhysicianName", "StudyDescription", "SeriesDescription")
    ] + [
        str(item.get("RequestedProcedureDescription", "")) for item in ds.RequestAttributesSequence
    ]


def _part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


__all__ = [
    "CONVERSION_TYPES",
    "CancelledOrderError",
    "CaptureResult",
    "UnknownOrderError",
    "store_capture",
]
