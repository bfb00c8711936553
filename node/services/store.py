"""The one ingest path: STOW-RS, C-STORE, the capture gateway and peer transfers all end here.

An instance arrives as a byte stream. `InstanceIngest` validates its structure while it streams
(`Part10Scanner`), parses the header once everything before Pixel Data has arrived, seals every
byte under the study's DEK before it reaches the disk, and indexes it only when the whole
object is durable. Memory stays bounded by the header size plus one encryption segment.

Duplicate policy (documented in docs/dicom-conformance.md): a SOP Instance UID already stored
with byte-identical content is accepted again without storing a second copy (idempotent
retries); the same UID with different content is refused (0x0111), and the stored instance is
left untouched.

One patient per study: an instance whose Patient ID (and issuer) differs from the patient its
study is filed under is refused (0xA902), as dcm4chee-arc refuses a conflicting Patient ID,
instead of being indexed under the other patient.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from node.dicom.part10 import Part10Error, Part10Scanner
from node.services.archive import Archive
from node.services.matching import match_new_study
from node.services.patients import same_patient
from node.storage import records
from node.storage.blobs import PendingBlob
from node.storage.crypto import blob_aad, seal

# FailureReason codes (PS3.18 §10.5.3.2 and PS3.4 Annex GG / DIMSE C-STORE statuses).
REASON_PROCESSING = 0x0110
REASON_DUPLICATE = 0x0111
REASON_NOT_AUTHORIZED = 0x0124
REASON_OUT_OF_RESOURCES = 0xA700
REASON_STUDY_MISMATCH = 0xA900  # "Data Set does not match SOP Class" family: wrong study
REASON_MISSING_ATTRIBUTE = 0xA901
# Same family: the object conflicts with what the archive holds, and resending it cannot help
# (an A7xx "out of resources" code would invite the sender to retry).
REASON_PATIENT_MISMATCH = 0xA902
PATIENT_MISMATCH = "the study is already filed under a different patient"
REASON_NOT_DICOM = 0xC000  # "Cannot understand"
REASON_TRUNCATED = 0xC001
REASON_MALFORMED = 0xC002

HEADER_INLINE_LIMIT = 1 << 20
# What pydicom raises on hostile headers: a truncated deflate stream surfaces as zlib.error,
# damaged lengths as struct.error/IndexError/OverflowError (found by tests/node/test_fuzz.py).
_PARSE_ERRORS = (
    InvalidDicomError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    OSError,
    zlib.error,
    struct.error,
    IndexError,
    OverflowError,
    NotImplementedError,  # an unknown VR
)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class StoreFailure(Exception):
    """One instance could not be stored; the others in the request are unaffected."""

    def __init__(
        self, code: int, reason: str, sop_class_uid: str | None = None, sop_uid: str | None = None
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_uid


@dataclass(frozen=True)
class StoredInstance:
    """An instance that is durably stored and indexed."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    created: bool  # False when an identical copy was already stored


def _valid_uid(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def declares_burned_in(ds: Dataset) -> bool:
    """Whether the header declares text burned into its pixels (Burned In Annotation YES)."""
    return (_text(ds, "BurnedInAnnotation") or "").strip().upper() == "YES"


def index_attributes(
    ds: Dataset, transfer_syntax: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Study, series and instance index columns from a header."""
    name = _text(ds, "PatientName")
    study = {
        "study_uid": ds.StudyInstanceUID,
        "patient_id": _text(ds, "PatientID"),
        "patient_issuer": _text(ds, "IssuerOfPatientID"),
        "patient_name": name,
        "patient_name_search": name.upper() if name else None,
        "patient_birth_date": _text(ds, "PatientBirthDate"),
        "patient_sex": _text(ds, "PatientSex"),
        "study_date": _text(ds, "StudyDate"),
        "study_time": _text(ds, "StudyTime"),
        "accession_number": _text(ds, "AccessionNumber"),
        "study_id": _text(ds, "StudyID"),
        "study_description": _text(ds, "StudyDescription"),
        "referring_physician_name": _text(ds, "ReferringPhysicianName"),
    }
    series = {
        "series_uid": ds.SeriesInstanceUID,
        "study_uid": ds.StudyInstanceUID,
        "modality": _text(ds, "Modality"),
        "series_number": _int(ds, "SeriesNumber"),
        "series_description": _text(ds, "SeriesDescription"),
        "series_date": _text(ds, "SeriesDate"),
        "series_time": _text(ds, "SeriesTime"),
        "body_part_examined": _text(ds, "BodyPartExamined"),
        "performed_procedure_step_start_date": _text(ds, "PerformedProcedureStepStartDate"),
        "performed_procedure_step_start_time": _text(ds, "PerformedProcedureStepStartTime"),
    }
    instance = {
        "sop_instance_uid": ds.SOPInstanceUID,
        "series_uid": ds.SeriesInstanceUID,
        "study_uid": ds.StudyInstanceUID,
        "sop_class_uid": ds.SOPClassUID,
        "instance_number": _int(ds, "InstanceNumber"),
        "transfer_syntax_uid": transfer_syntax,
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "number_of_frames": _int(ds, "NumberOfFrames"),
        "bits_allocated": _int(ds, "BitsAllocated"),
        "photometric_interpretation": _text(ds, "PhotometricInterpretation"),
        "burned_in_annotation": declares_burned_in(ds),
    }
    return study, series, instance


def header_binding(sop_instance_uid: str) -> bytes:
    """Associated data for an instance's sealed header."""
    return b"header\x00" + sop_instance_uid.encode()


class InstanceIngest:
    """Consumes one instance's bytes in order; `finish` stores it or raises StoreFailure."""

    def __init__(
        self, archive: Archive, expected_study_uid: str | None = None, *, match_orders: bool = True
    ) -> None:
        self._archive = archive
        self._expected_study = expected_study_uid
        # A copy received from another hospital fulfils none of this hospital's orders: its
        # accession number is the owner's, so it must not complete (or queue against) ours.
        self._match_orders = match_orders
        self._scanner = Part10Scanner(max_header_bytes=archive.settings.max_header_bytes)
        self._prefix: bytearray | None = bytearray()
        self._blob: PendingBlob | None = None
        self._sha = hashlib.sha256()
        self._size = 0
        self._header: Dataset | None = None
        self._header_bytes = b""
        self._dek = b""
        self._failure: StoreFailure | None = None
        self._index: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
        self._head: bytearray | None = bytearray()

    @property
    def failed(self) -> bool:
        """True once the instance is known to be unstorable (remaining bytes are ignored)."""
        return self._failure is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next bytes of the instance."""
        if self._failure is not None:
            return
        if self._head is not None:
            # Decide on the first 132 bytes whether a preamble must be supplied.
            self._head += data
            if len(self._head) < 132:
                return
            data, self._head = _with_preamble(bytes(self._head)), None
        try:
            self._scanner.feed(data)
        except Part10Error as exc:
            code = REASON_TRUNCATED if exc.truncated else REASON_NOT_DICOM
            if self._scanner.dataset_offset is not None:
                code = REASON_MALFORMED
            self._fail(StoreFailure(code, exc.reason))
            return
        self._sha.update(data)
        self._size += len(data)
        if self._blob is not None:
            self._blob.write(data)
            return
        assert self._prefix is not None
        self._prefix += data
        if len(self._prefix) > self._archive.settings.max_header_bytes:
            limit = self._archive.settings.max_header_bytes
            self._fail(StoreFailure(REASON_OUT_OF_RESOURCES, f"header exceeds {limit} bytes"))
            return
        if self._scanner.pixel_offset is not None and not self._scanner.deflated:
            self._start_blob(complete=False)

    def finish(self) -> StoredInstance:
        """The stream ended: validate, make durable, index. Raises StoreFailure."""
        if self._head is not None:
            head, self._head = bytes(self._head), None
            self.feed(_with_preamble(head))
        if self._failure is not None:
            raise self._failure
        try:
            try:
                self._scanner.finish()
            except Part10Error as exc:
                code = REASON_TRUNCATED if exc.truncated else REASON_MALFORMED
                if self._scanner.dataset_offset is None and self._size < 132:
                    code = REASON_NOT_DICOM
                raise StoreFailure(code, exc.reason) from exc
            if self._blob is None:
                self._start_blob(complete=True)
            if self._failure is not None:
                raise self._failure
            return self._commit()
        except StoreFailure as failure:
            self._fail(failure)
            raise
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard everything written for this instance."""
        if self._blob is not None:
            self._blob.abort()
            self._blob = None
        self._prefix = None

    # -- internals -----------------------------------------------------------------------------

    def _fail(self, failure: StoreFailure) -> None:
        if self._header is not None:
            try:
                failure.sop_class_uid = failure.sop_class_uid or self._header.get("SOPClassUID")
                failure.sop_instance_uid = failure.sop_instance_uid or self._header.get(
                    "SOPInstanceUID"
                )
            except _PARSE_ERRORS:
                pass  # the UIDs themselves cannot be decoded: report the failure without them
        self._failure = failure
        self.abort()

    def _start_blob(self, complete: bool) -> None:
        assert self._prefix is not None
        end = self._scanner.pixel_offset if not complete else None
        header_bytes = bytes(self._prefix[:end] if end is not None else self._prefix)
        try:
            ds = pydicom.dcmread(io.BytesIO(header_bytes), stop_before_pixels=True)
            if self._scanner.deflated and complete:
                ds = pydicom.dcmread(io.BytesIO(bytes(self._prefix)))  # validates the inflate
            self._header = ds
            self._validate(ds)
            # pydicom decodes values lazily: read the index attributes now, so that one it
            # cannot decode (an unknown VR) refuses the instance here instead of failing later
            # as a 500. Only these are decoded: decoding every element cost ~10x the parse.
            self._index = index_attributes(ds, self._scanner.transfer_syntax or "")
        except StoreFailure as failure:
            self._fail(failure)
            return
        except _PARSE_ERRORS as exc:
            self._header = None
            # The exception's text may quote a header value: name only its kind.
            reason = f"DICOM header cannot be parsed ({type(exc).__name__})"
            self._fail(StoreFailure(REASON_MALFORMED, reason))
            return
        # Large pixel-less headers (documents, deflated objects) are read from the blob instead.
        self._header_bytes = header_bytes if len(header_bytes) <= HEADER_INLINE_LIMIT else b""
        with self._archive.engine.begin() as conn:
            self._dek = self._archive.keys.get_or_create(conn, ds.StudyInstanceUID)
        self._blob = self._archive.blobs.begin(self._dek, blob_aad(ds.SOPInstanceUID))
        self._blob.write(self._prefix)
        self._prefix = None

    def _validate(self, ds: Dataset) -> None:
        missing = [
            k
            for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
            if not ds.get(k)
        ]
        if missing:
            raise StoreFailure(
                REASON_MISSING_ATTRIBUTE, f"required attribute missing: {', '.join(missing)}"
            )
        for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not _valid_uid(str(ds.get(k))):
                raise StoreFailure(REASON_MALFORMED, f"{k} is not a valid UID")
        if self._expected_study and ds.StudyInstanceUID != self._expected_study:
            raise StoreFailure(
                REASON_STUDY_MISMATCH,
                "StudyInstanceUID differs from the study in the request URL",
            )

    def _commit(self) -> StoredInstance:
        ds = self._header
        assert ds is not None and self._blob is not None
        sha = self._sha.hexdigest()
        archive = self._archive
        study, series, instance = self._index
        sop_uid = instance["sop_instance_uid"]
        result = StoredInstance(
            study["study_uid"], series["series_uid"], sop_uid, instance["sop_class_uid"], True
        )
        with archive.engine.connect() as conn:
            existing = records.find_instance(conn, sop_uid)
            if existing is not None:
                return self._duplicate(existing, sha, result)
            owner = records.series_study(conn, series["series_uid"])
            if owner is not None and owner != study["study_uid"]:
                raise StoreFailure(
                    REASON_STUDY_MISMATCH, "SeriesInstanceUID belongs to another study"
                )
            # Refused here, before the blob is made durable, when the study is already filed
            # under another patient (a refusal then costs no fsync); the indexing transaction
            # checks again, for a study whose first instance arrives concurrently.
            filed_under = records.filed_patient(conn, study["study_uid"])
            if filed_under is not None:
                _check_patient(conn, filed_under, study)
        blob_name = self._blob.commit()
        instance.update(
            size_bytes=self._size,
            content_sha256=sha,
            blob_name=blob_name,
            metadata_enc=seal(self._dek, self._header_bytes, header_binding(sop_uid)),
        )
        try:
            with archive.engine.begin() as conn:
                filed = records.insert_instance(conn, study, series, instance)
                if not filed.created:  # a refusal rolls the insert back
                    _check_patient(conn, (filed.patient_id, filed.patient_issuer), study)
                elif self._match_orders:
                    match_new_study(
                        conn, study["study_uid"], study["accession_number"], study["patient_id"]
                    )
        except IntegrityError:
            # A concurrent store of the same SOP Instance UID won the race.
            archive.blobs.delete(blob_name)
            with archive.engine.connect() as conn:
                existing = records.find_instance(conn, sop_uid)
            if existing is None:
                raise
            return self._duplicate(existing, sha, result)
        except BaseException:
            archive.blobs.delete(blob_name)
            raise
        return result

    def _duplicate(
        self, existing: records.InstanceRow, sha: str, result: StoredInstance
    ) -> StoredInstance:
        if self._blob is not None:
            self._blob.abort()
        if existing.content_sha256 == sha and existing.study_uid == result.study_uid:
            return StoredInstance(
                result.study_uid,
                result.series_uid,
                result.sop_instance_uid,
                result.sop_class_uid,
                created=False,
            )
        raise StoreFailure(
            REASON_DUPLICATE,
            "SOP Instance UID already stored with different content",
        )


def _check_patient(
    conn: Connection, filed: tuple[str | None, str | None], study: dict[str, Any]
) -> None:
    """Refuse an instance of a patient other than the one (`filed`: Patient ID, issuer) its
    study is filed under.

    Checked in the transaction that indexes the instance, after the study row exists, so two
    patients' first instances of one study arriving at once cannot both be filed."""
    arriving = (study["patient_id"], study["patient_issuer"])
    if not same_patient(conn, filed, arriving):
        raise StoreFailure(REASON_PATIENT_MISMATCH, PATIENT_MISMATCH)


def _with_preamble(head: bytes) -> bytes:
    """Supply the PS3.10 preamble and prefix when a writer sent the File Meta Information
    without them (common: pydicom's dcmwrite of a dataset that was never read from a file),
    so that what is stored and served is always a Part-10 file."""
    if head[128:132] != b"DICM" and head[:2] == b"\x02\x00" and head[2:4] < b"\x20\x00":
        return b"\x00" * 128 + b"DICM" + head
    return head


def store_bytes(
    archive: Archive, data: bytes, expected_study_uid: str | None = None
) -> StoredInstance:
    """Store one whole instance held in memory (DIMSE, gateway, tests)."""
    ingest = InstanceIngest(archive, expected_study_uid)
    ingest.feed(data)
    return ingest.finish()
