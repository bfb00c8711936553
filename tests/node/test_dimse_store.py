"""C-ECHO, association policy and C-STORE with DCMTK's echoscu/storescu against a real node."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.node.conftest import plaintext_findings
from tests.node.dimse_helpers import (
    ARCHIVE_AE,
    MODALITY_AE,
    NODE_AE,
    WORKSTATION_AE,
    DimseNode,
    dataset_bytes,
    dcmtk,
    dimse_node,
    header,
    storescu,
    wado_instance,
)
from tests.node.factories import make_ct, pixel_needles, real_sample_files, to_bytes

__all__ = ["dimse_node"]

SAMPLES = {p.name: p for p in real_sample_files()}
# storescu proposes uncompressed syntaxes unless told: -xw adds JPEG 2000 (lossy or lossless,
# .91), -xv JPEG 2000 lossless (.90) — each file goes in its own syntax, as a modality sends it.
J2K_ANY = ["chest-cr-philips-j2k.dcm"]
J2K_LOSSLESS = ["extremity-cr-j2k-lossless.dcm", "mr-j2k-lossless.dcm", "us-multiframe-rgb.dcm"]


def _study_count(node: DimseNode, study_uid: str) -> int:
    r = httpx.get(f"{node.dicomweb}/studies", params={"StudyInstanceUID": study_uid}, timeout=30)
    assert r.status_code in (200, 204), r.text
    return 0 if r.status_code == 204 else len(r.json())


def test_echo_from_known_titles_and_refusal_of_unknown_ones(dimse_node: DimseNode) -> None:
    port = str(dimse_node.dimse_port)
    ok = dcmtk("echoscu", "-aet", MODALITY_AE, "-aec", NODE_AE, "127.0.0.1", port)
    assert ok.returncode == 0, ok.stderr
    # Titles match upper-cased and stripped: a lower-case caller is still the same AE.
    lower = dcmtk("echoscu", "-aet", WORKSTATION_AE.lower(), "-aec", NODE_AE, "127.0.0.1", port)
    assert lower.returncode == 0, lower.stderr

    stranger = dcmtk("echoscu", "-aet", "STRANGER", "-aec", NODE_AE, "127.0.0.1", port)
    assert stranger.returncode != 0
    out = stranger.stdout + stranger.stderr
    assert "Association Rejected" in out and "Calling AE Title Not Recognized" in out

    # Nothing a stranger sends is stored: the association never opens.
    out = storescu(dimse_node, "STRANGER", [SAMPLES["chest-cr-philips-j2k.dcm"]], "-xw")
    assert "Calling AE Title Not Recognized" in out, out
    assert _study_count(dimse_node, _study_uid(SAMPLES["chest-cr-philips-j2k.dcm"])) == 0

    wrong_called = dcmtk("echoscu", "-aet", MODALITY_AE, "-aec", "OTHER", "127.0.0.1", port)
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr


def _study_uid(path: Path) -> str:
    return str(header(path).StudyInstanceUID)


def test_real_files_stored_by_storescu_come_back_by_wado_and_getscu(
    dimse_node: DimseNode, tmp_path: Path
) -> None:
    out = storescu(dimse_node, ARCHIVE_AE, [SAMPLES[n] for n in J2K_ANY], "-xw")
    out += storescu(dimse_node, ARCHIVE_AE, [SAMPLES[n] for n in J2K_LOSSLESS], "-xv")
    assert "Error" not in out and "Failed" not in out, out

    got = tmp_path / "got"
    got.mkdir()
    # getscu proposes one context per SOP class; the node answers in the compressed syntax
    # when it was proposed, so each file is fetched proposing its own syntax.
    prefer = {"chest-cr-philips-j2k.dcm": "+xw", "us-multiframe-rgb.dcm": "+x="}
    for name in J2K_ANY + J2K_LOSSLESS:
        # +B: getscu writes what arrives, byte for byte, so the comparison is exact.
        result = dcmtk(
            "getscu", "-S", "+B", prefer.get(name, "+xv"), "-aet", WORKSTATION_AE,
            "-aec", NODE_AE, "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={_study_uid(SAMPLES[name])}",
            "127.0.0.1", str(dimse_node.dimse_port),
        )  # fmt: skip
        out = result.stdout + result.stderr
        assert result.returncode == 0 and "Completed Suboperations : 1" in out, out

    for name in J2K_ANY + J2K_LOSSLESS:
        original = header(SAMPLES[name])
        stored = wado_instance(dimse_node.dicomweb, original)
        # storescu re-encodes what it reads (undefined-length sequences get explicit lengths),
        # so against the file the check is on content: every element, pixel data included.
        as_stored = pydicom.dcmread(io.BytesIO(stored))
        as_sent = pydicom.dcmread(SAMPLES[name])
        if 0xFFFCFFFC in as_sent:
            del as_sent[0xFFFCFFFC]  # trailing padding, which PS3.10 §7.2 lets a writer drop
        assert as_stored == as_sent, name
        assert as_stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        # C-GET sends the stored bytes unchanged.
        uid = str(original.SOPInstanceUID)
        matches = [p for p in got.iterdir() if p.name == uid or p.name.endswith(f".{uid}")]
        assert len(matches) == 1, (name, sorted(p.name for p in got.iterdir()))
        fetched = matches[0]
        assert dataset_bytes(stored) == fetched.read_bytes()[-len(dataset_bytes(stored)) :]

    # Nothing readable on disk: the pixel data of every file is sealed.
    needles = [n for name in SAMPLES for n in pixel_needles(SAMPLES[name].read_bytes())]
    hits = plaintext_findings(dimse_node.node.data_dir, [b"DICM", *needles])
    assert not hits, hits


def test_modality_object_without_accession_is_refused_and_not_stored(
    dimse_node: DimseNode, tmp_path: Path
) -> None:
    without = make_ct(seed=3)
    del without.AccessionNumber
    with_empty = make_ct(seed=4)
    with_empty.AccessionNumber = ""
    good = make_ct(seed=5)
    files = []
    for i, ds in enumerate((without, with_empty, good)):
        path = tmp_path / f"ct{i}.dcm"
        path.write_bytes(to_bytes(ds))
        files.append(path)

    out = storescu(dimse_node, MODALITY_AE, files, "-nh")  # -nh: go on after a refusal
    # PS3.4 B.2.3 status A900 (Data Set does not match SOP Class) for both refusals.
    assert out.count("DataSetDoesNotMatchSOPClass") == 2, out
    assert _study_count(dimse_node, without.StudyInstanceUID) == 0
    assert _study_count(dimse_node, with_empty.StudyInstanceUID) == 0
    assert _study_count(dimse_node, good.StudyInstanceUID) == 1

    # The same object from an archive (a migration, no order) is accepted.
    out = storescu(dimse_node, ARCHIVE_AE, files[:1])
    assert "Error" not in out, out
    assert _study_count(dimse_node, without.StudyInstanceUID) == 1


def test_store_failures_carry_the_store_service_status(
    dimse_node: DimseNode, tmp_path: Path
) -> None:
    first = make_ct(seed=7)
    path = tmp_path / "first.dcm"
    path.write_bytes(to_bytes(first))
    assert "Error" not in storescu(dimse_node, MODALITY_AE, [path])
    # Sending the identical object again is an idempotent retry: success.
    assert "Error" not in storescu(dimse_node, MODALITY_AE, [path])

    changed = make_ct(seed=8, study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID)
    changed.SOPInstanceUID = first.SOPInstanceUID
    changed.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    other = tmp_path / "changed.dcm"
    other.write_bytes(to_bytes(changed))
    out = storescu(dimse_node, MODALITY_AE, [other])
    assert "Error: CannotUnderstand" in out, out
    # pynetdicom shows the exact status: the store service's "duplicate with different
    # content" (0111) as C-STORE's Cannot understand family, C111, with a comment saying why.
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", dimse_node.dimse_port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(changed)
    finally:
        assoc.release()
    assert status.Status == 0xC111
    assert "different content" in status.ErrorComment
    stored = wado_instance(dimse_node.dicomweb, first)
    assert dataset_bytes(stored) == dataset_bytes(path.read_bytes())


def test_storescu_is_told_when_the_study_belongs_to_another_patient(
    dimse_node: DimseNode, tmp_path: Path
) -> None:
    first = make_ct(seed=31, patient_id="MRN-A")
    intruder = make_ct(seed=32, study_uid=first.StudyInstanceUID, patient_id="MRN-B")
    same_patient = make_ct(seed=33, study_uid=first.StudyInstanceUID, patient_id="MRN-A")
    files = []
    for name, ds in (("first", first), ("intruder", intruder), ("same", same_patient)):
        files.append(tmp_path / f"{name}.dcm")
        files[-1].write_bytes(to_bytes(ds))

    out = storescu(dimse_node, ARCHIVE_AE, files, "-nh", "-d")  # -d: shows the Error Comment

    assert out.count("DIMSE Status                  : 0x0000: Success") == 2, out
    assert "0xa902: Error: Data Set does not match SOP Class" in out, out
    assert "[the study is already filed under a different patient]" in out
    meta = httpx.get(f"{dimse_node.dicomweb}/studies/{first.StudyInstanceUID}/metadata", timeout=30)
    assert sorted(m["00080018"]["Value"][0] for m in meta.json()) == sorted(
        [first.SOPInstanceUID, same_patient.SOPInstanceUID]
    )
