"""AI-training access (issue #6): the training credential sees exactly the studies whose
patients consented to AI training for this node, de-identified by PS3.15 Annex E.

One node on the embedded chain, with auth on. Patients link their ledger key and sign grants
through the node's real routes and the real ConsentRegistry:
- MRN-AI-1 grants AI training to this node for all studies: a factory study carrying every
  Annex E attribute, the real sample files, and a CT study with one burned-in instance;
  an ultrasound of theirs and a study naming another issuer for their MRN stay unseen;
- MRN-AI-4 grants AI training to all members for one of their two studies;
- MRN-TX-2 is linked and grants treatment only; MRN-UL-3 is not linked at all.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from ledger.audit_events import uid_hash
from ledger.consent import Purpose
from node.services import query as query_service
from node.services.deid_table import annex_e_table
from node.storage import records
from tests.conftest import SHARED_DATA
from tests.node.audit_helpers import audit_search, leaf_event
from tests.node.authhelpers import account_token
from tests.node.consent_helpers import serve_consent_node
from tests.node.factories import ANNEX_E_ORIGINALS, annex_e_dataset, make_ct
from tests.node.training_helpers import ISSUER, TrainingSite, bearer, parse, training_site

CONSENTED, TREATMENT_ONLY, UNLINKED, ONE_STUDY = "MRN-AI-1", "MRN-TX-2", "MRN-UL-3", "MRN-AI-4"
REAL_FILES = ("chest-cr-philips-j2k.dcm", "extremity-cr-j2k-lossless.dcm", "mr-j2k-lossless.dcm")
# Text that only an original value holds: never in what the training credential receives.
NEEDLES = (
    b"Doe^Jane",
    b"Orig LO value",
    b"ORIG SH",
    b"original long text",
    b"original short text",
    b"original unlimited text",
    b"original UC",
    b"ORIG7731",
    b"ORIGAE7731",
    b"hospital.example",
    b"1.2.826.0.1.3680043.8.498.7731",  # not the bare root: pydicom's own UIDs carry it
    b"1.2.826.0.1.3680043.8.498.99",
    b"Inner^Name",
    b"private patient id",
    b"overlay comment",
    CONSENTED.encode(),
    ISSUER.encode(),
)


def _for(ds: Dataset, mrn: str, issuer: str | None = ISSUER) -> Dataset:
    ds = copy.deepcopy(ds)
    ds.PatientID = mrn
    if issuer is None:
        ds.pop("IssuerOfPatientID", None)
    else:
        ds.IssuerOfPatientID = issuer
    return ds


def annex_e_instance(mrn: str) -> tuple[Dataset, list[tuple[int, str]]]:
    """A storable CT instance carrying every Annex E attribute pydicom knows, and those rows."""
    ds = make_ct(patient_id=mrn)
    stuffed, rows = annex_e_dataset()
    keep = {
        int(Tag(k))
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")
    }
    for elem in stuffed:
        if int(elem.tag) not in keep and elem.tag.group != 0:  # no command set in a file
            ds[elem.tag] = elem
    ds.IssuerOfPatientID = ISSUER
    ds.Modality = "CT"
    ds.BurnedInAnnotation = "NO"
    kept = keep | {0x00100021}
    return ds, [(t, a) for t, a in rows if t not in kept and t >> 16 != 0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with training_site(tmp_path_factory.mktemp("training") / "node") as site:
        annex, annex_rows = annex_e_instance(CONSENTED)
        real = {name: _for(pydicom.dcmread(SHARED_DATA / name), CONSENTED) for name in REAL_FILES}
        us = _for(pydicom.dcmread(SHARED_DATA / "us-multiframe-rgb.dcm"), CONSENTED)
        ct_study, ct_series = generate_uid(), generate_uid()
        clean = make_ct(ct_study, ct_series, patient_id=CONSENTED, seed=1)
        burned = make_ct(ct_study, ct_series, patient_id=CONSENTED, seed=2)
        clean.InstanceNumber, burned.InstanceNumber = 1, 2
        burned.BurnedInAnnotation = "YES"
        other_issuer = _for(make_ct(patient_id=CONSENTED, seed=3), CONSENTED, "HOSP-Z")
        treatment = make_ct(patient_id=TREATMENT_ONLY, seed=4)
        unlinked = make_ct(patient_id=UNLINKED, seed=5)
        granted_one, other_one = (
            make_ct(patient_id=ONE_STUDY, seed=6),
            make_ct(patient_id=ONE_STUDY, seed=7),
        )
        hidden = [us, other_issuer, treatment, unlinked, other_one]
        site.store([annex, *real.values(), clean, burned, granted_one, *hidden])
        site.link(CONSENTED)
        site.link(TREATMENT_ONLY)
        site.link(ONE_STUDY, issuer="HOSP-A")
        site.grant(CONSENTED)
        site.grant(TREATMENT_ONLY, Purpose.TREATMENT)
        site.grant(ONE_STUDY, study_uid=granted_one.StudyInstanceUID, all_members=True)
        yield {
            "site": site,
            "annex": annex,
            "annex_rows": annex_rows,
            "real": real,
            "clean": clean,
            "burned": burned,
            "visible": {
                annex.StudyInstanceUID,
                *(ds.StudyInstanceUID for ds in real.values()),
                ct_study,
                granted_one.StudyInstanceUID,
            },
            "hidden": {
                us.StudyInstanceUID,
                other_issuer.StudyInstanceUID,
                treatment.StudyInstanceUID,
                unlinked.StudyInstanceUID,
                other_one.StudyInstanceUID,
            },
        }


def _uids(results: list[dict[str, Any]], tag: str) -> set[str]:
    return {r[tag]["Value"][0] for r in results}


def test_the_credential_sees_exactly_the_consented_studies(site: dict[str, Any]) -> None:
    s: TrainingSite = site["site"]
    mapped = {s.mapper(uid) for uid in site["visible"]}
    assert _uids(s.search("studies"), "0020000D") == mapped
    # Staff see everything, under the stored UIDs.
    staff = s.get("studies", headers=s.admin).json()
    assert _uids(staff, "0020000D") == site["visible"] | site["hidden"]
    # Below study level: only images, never the burned-in instance.
    instances = s.search("instances")
    sops = _uids(instances, "00080018")
    assert s.mapper(site["clean"].SOPInstanceUID) in sops
    assert s.mapper(site["burned"].SOPInstanceUID) not in sops
    assert len(sops) == len(site["visible"])  # one servable image per visible study


def test_hidden_studies_do_not_exist_for_it(site: dict[str, Any]) -> None:
    s: TrainingSite = site["site"]
    unknown = s.get(f"studies/{s.mapper(generate_uid())}")
    assert unknown.status_code == 404
    for uid in site["hidden"]:
        for shown in (s.mapper(uid), uid):  # the UID it would see, and the stored one
            assert s.search("studies", StudyInstanceUID=shown) == []
            assert s.search(f"studies/{shown}/series") == []
            for path in (f"studies/{shown}", f"studies/{shown}/metadata"):
                r = s.get(path)
                assert (r.status_code, r.json()) == (404, unknown.json()), path
    # Stored UIDs of a visible study are not an address either.
    visible = next(iter(site["visible"]))
    assert s.get(f"studies/{visible}").status_code == 404
    burned = site["burned"]
    path = "/".join(
        f"{level}/{s.mapper(uid)}"
        for level, uid in zip(
            ("studies", "series", "instances"),
            (burned.StudyInstanceUID, burned.SeriesInstanceUID, burned.SOPInstanceUID),
            strict=True,
        )
    )
    assert s.get(path).status_code == 404


def _check_annex_e(ds: Dataset, original: Dataset, rows: list[tuple[int, str]]) -> None:
    """Every Table E.1-1 row's action took effect; no original value is left anywhere."""
    table = annex_e_table()
    for tag, action in rows:
        if action in ("X", "X/Z", "X/D", "X/Z/D"):
            assert tag not in ds, f"{Tag(tag)} ({action}) survived"
        elif action in ("Z", "Z/D"):
            assert tag in ds and ds[tag].is_empty, f"{Tag(tag)} ({action}) not emptied"
        elif action == "D":
            assert tag in ds, f"{Tag(tag)} (D) lost its dummy"
            if ds[tag].VR != "SQ":
                assert ds[tag].value != original[tag].value, f"{Tag(tag)} (D) kept its value"
        elif action == "U":
            assert str(ds[tag].value).startswith("2.25."), f"{Tag(tag)} (U) kept its UID"
        elif action == "X/Z/U*":
            assert tag not in ds or all(
                "ReferencedSOPInstanceUID" not in item
                or item.ReferencedSOPInstanceUID.startswith("2.25.")
                for item in ds[tag].value
            )
    leftovers = {str(v) for v in ANNEX_E_ORIGINALS.values()}
    for elem in ds.iterall():
        if elem.VR not in ("SQ", "OB", "OW") and table.action(int(elem.tag)) is not None:
            assert str(elem.value) not in leftovers, f"{elem.tag} kept an original value"
    assert not any(elem.tag.is_private for elem in ds.iterall())
    assert ds.PatientIdentityRemoved == "YES"


def _wado_path(s: TrainingSite, ds: Dataset) -> str:
    return (
        f"studies/{s.mapper(ds.StudyInstanceUID)}/series/{s.mapper(ds.SeriesInstanceUID)}"
        f"/instances/{s.mapper(ds.SOPInstanceUID)}"
    )


def test_no_annex_e_attribute_survives_in_instances_or_metadata(site: dict[str, Any]) -> None:
    s: TrainingSite = site["site"]
    annex: Dataset = site["annex"]
    path = _wado_path(s, annex)
    (data,) = s.retrieve(path)
    stored_uids = (annex.StudyInstanceUID, annex.SeriesInstanceUID, annex.SOPInstanceUID)
    for needle in (*NEEDLES, *(uid.encode() for uid in stored_uids)):
        assert needle not in data, f"{needle!r} left in the retrieved instance"
    got = parse(data)
    _check_annex_e(got, annex, site["annex_rows"])
    assert (
        got.SOPInstanceUID
        == got.file_meta.MediaStorageSOPInstanceUID
        == s.mapper(annex.SOPInstanceUID)
    )
    assert got.PixelData == annex.PixelData
    # The study retrieve and the metadata say the same, with nothing of the original either.
    (again,) = s.retrieve(f"studies/{s.mapper(annex.StudyInstanceUID)}")
    assert parse(again).SOPInstanceUID == got.SOPInstanceUID
    for meta_path in (f"{path}/metadata", f"studies/{s.mapper(annex.StudyInstanceUID)}/metadata"):
        r = s.get(meta_path)
        assert r.status_code == 200, r.text
        for needle in NEEDLES:
            assert needle.decode() not in r.text, f"{needle!r} left in {meta_path}"
        (doc,) = r.json()
        assert "7FE00010" not in doc  # pixels come with the instance, never a bulk data URI
        _check_annex_e(Dataset.from_json(doc), annex, site["annex_rows"])
    # Search results at every level, everything the header holds included.
    for level in ("studies", "series", "instances"):
        r = s.get(level, params={"includefield": "all"})
        assert r.status_code == 200, r.text
        for needle in NEEDLES:
            assert needle.decode() not in r.text, f"{needle!r} left in a {level} search"


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_lose_what_annex_e_lists(site: dict[str, Any], name: str) -> None:
    s: TrainingSite = site["site"]
    original: Dataset = site["real"][name]
    (data,) = s.retrieve(_wado_path(s, original))
    got = parse(data)
    table = annex_e_table()
    checked = 0
    for elem in original:
        action = table.action(int(elem.tag))
        if elem.tag.is_private:
            assert elem.tag not in got
        if action is None or elem.is_empty:
            continue
        checked += 1
        if action == "X/Z/U*":  # kept, with every UID inside replaced
            for item, before in zip(got[elem.tag].value, elem.value, strict=True):
                if "ReferencedSOPInstanceUID" in before:
                    uid = before.ReferencedSOPInstanceUID
                    assert item.ReferencedSOPInstanceUID == s.mapper(uid)
        elif action.startswith("X"):
            assert elem.tag not in got, f"{elem.tag} ({action}) survived"
        elif action in ("Z", "Z/D"):
            assert got[elem.tag].is_empty, f"{elem.tag} ({action}) not emptied"
        elif action == "U":
            assert got[elem.tag].value == s.mapper(str(elem.value))
        elif action == "D" and elem.VR != "SQ":
            assert got[elem.tag].value != elem.value
    assert checked >= 10, "the sample should carry identifying attributes"
    assert got.PixelData == original.PixelData  # pixels as stored, byte for byte
    for needle in (CONSENTED.encode(), ISSUER.encode()):
        assert needle not in data
    if original.get("PatientName"):
        assert str(original.PatientName).encode() not in data


def test_qido_then_wado_with_the_uids_it_sees(site: dict[str, Any]) -> None:
    s: TrainingSite = site["site"]
    (series,) = s.search("series", Modality="CR", BodyPartExamined="CHEST")
    study_uid = series["0020000D"]["Value"][0]
    series_uid = series["0020000E"]["Value"][0]
    assert series["00081190"]["Value"][0].endswith(f"/studies/{study_uid}/series/{series_uid}")
    (instance,) = s.search(f"studies/{study_uid}/series/{series_uid}/instances")
    sop_uid = instance["00080018"]["Value"][0]
    (found,) = s.search("instances", SOPInstanceUID=sop_uid)
    assert found["00081190"] == instance["00081190"]
    (data,) = s.retrieve(instance["00081190"]["Value"][0])
    assert parse(data).SOPInstanceUID == sop_uid
    chest = site["real"]["chest-cr-philips-j2k.dcm"]
    assert sop_uid == s.mapper(chest.SOPInstanceUID)


def test_matching_on_what_deidentification_removes_is_refused(site: dict[str, Any]) -> None:
    s: TrainingSite = site["site"]
    for key, value in (
        ("PatientName", "DOE*"),
        ("PatientID", CONSENTED),
        ("StudyDate", "20240115"),
        ("AccessionNumber", "ACC-1"),
    ):
        r = s.get("studies", params={key: value})
        assert r.status_code == 400, r.text
        assert key in r.json()["error"] and "de-identification" in r.json()["error"]
    bad = s.get("studies/not-a-uid/series")
    assert bad.status_code == 400 and "not a valid UID" in bad.json()["error"]


def test_only_searches_instances_and_metadata_are_open_to_it(site: dict[str, Any]) -> None:
    s: TrainingSite = site["site"]
    path = _wado_path(s, site["clean"])
    for refused in (f"{path}/frames/1", f"{path}/rendered", f"{path}/thumbnail"):
        r = s.get(refused)
        assert r.status_code == 403, refused
        assert "may only search" in r.json()["error"]
    fhir = httpx.get(f"{s.node.url}/fhir/ImagingStudy", headers=s.trainer, timeout=60)
    assert fhir.status_code == 403
    stow = httpx.post(f"{s.dicomweb}/studies", headers=s.trainer, content=b"", timeout=60)
    assert stow.status_code == 403


def test_every_training_access_is_audited_for_ai_training(site: dict[str, Any]) -> None:
    s: TrainingSite = site["site"]
    clean: Dataset = site["clean"]
    s.retrieve(_wado_path(s, clean))
    patient = s.patients[CONSENTED].address.lower()
    events = [leaf_event(e) for e in audit_search(s.node.url, headers=s.admin)]
    training = [e for e in events if e.get("purpose") == "ai-training"]
    assert training, "no training access was audited"
    for event in training:
        (agent,) = [a for a in event["agents"] if a.get("requestor")]
        assert agent["who"] == "user:trainer-1" and agent["role"] == "110150"
    study = {"kind": "study", "ref": uid_hash(clean.StudyInstanceUID)}
    # The retrieve (DICOM Instances Transferred, read) names the stored study, the patient's
    # ledger address and the grant that permitted it.
    retrieves = [e for e in training if e["event_type"] == "110104" and study in e["entities"]]
    assert retrieves, "the retrieve does not name the stored study"
    entities = retrieves[0]["entities"]
    assert {"kind": "patient", "ref": patient} in entities
    (consent,) = [ent["ref"] for ent in entities if ent["kind"] == "consent"]
    assert consent.startswith("0x") and len(consent) == 66
    # A refused call is audited with the same purpose.
    assert s.get(f"{_wado_path(s, clean)}/rendered").status_code == 403
    events = [leaf_event(e) for e in audit_search(s.node.url, headers=s.admin)]
    assert any(e.get("purpose") == "ai-training" and e["outcome"] != 0 for e in events), (
        "the refused training call is not audited"
    )


def test_revoking_the_grant_removes_the_study_from_the_next_answer(
    site: dict[str, Any],
) -> None:
    s: TrainingSite = site["site"]
    mrn = "MRN-AI-5"
    study = make_ct(patient_id=mrn, seed=11)
    s.store([study])
    s.link(mrn)
    s.grant(mrn, study_uid=study.StudyInstanceUID)
    seen = s.mapper(study.StudyInstanceUID)
    assert seen in _uids(s.search("studies"), "0020000D")
    assert s.retrieve(f"studies/{seen}")
    s.grant(mrn, study_uid=study.StudyInstanceUID, revoke=True)
    assert seen not in _uids(s.search("studies"), "0020000D")
    assert s.get(f"studies/{seen}").status_code == 404


def _consented_series(s: TrainingSite, mrn: str) -> list[Dataset]:
    """A consented CT series of four images, stored; the second declares burned-in text."""
    study_uid, series_uid = generate_uid(), generate_uid()
    images = [make_ct(study_uid, series_uid, patient_id=mrn, seed=20 + i) for i in range(4)]
    for number, ds in enumerate(images, start=1):
        ds.InstanceNumber = number
        ds.BurnedInAnnotation = "YES" if number == 2 else "NO"
    s.store(images)
    s.link(mrn)
    s.grant(mrn, study_uid=study_uid)
    return images


def _sops(results: list[dict[str, Any]]) -> list[str]:
    return [r["00080018"]["Value"][0] for r in results]


def test_a_page_around_a_burned_in_instance_is_full_and_truncation_is_told(
    site: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    s: TrainingSite = site["site"]
    images = _consented_series(s, "MRN-AI-6")
    servable = [s.mapper(ds.SOPInstanceUID) for ds in images if ds.BurnedInAnnotation == "NO"]
    path = f"studies/{s.mapper(images[0].StudyInstanceUID)}/instances"
    # limit and offset count servable instances only: no short page, no instance skipped.
    pages = [_sops(s.search(path, limit="2", offset=offset)) for offset in ("0", "2")]
    assert pages == [servable[:2], servable[2:]]
    # Three servable instances past a maximum of two: cut, and the client is told.
    monkeypatch.setattr(query_service, "MAX_RESULTS", 2)
    cut = s.get(path)
    assert _sops(cut.json()) == servable[:2]
    assert cut.headers["Warning"].startswith("299 ")
    monkeypatch.setattr(query_service, "MAX_RESULTS", 3)
    whole = s.get(path)
    assert _sops(whole.json()) == servable and "Warning" not in whole.headers


def test_an_older_instance_is_judged_by_its_header_and_then_by_the_index(
    site: dict[str, Any],
) -> None:
    """Instances stored before the index recorded burned-in annotation (migration 0007 leaves
    them NULL) are read once, when the credential first reaches their study."""
    s: TrainingSite = site["site"]
    images = _consented_series(s, "MRN-AI-7")
    sop_uids = [ds.SOPInstanceUID for ds in images]
    column = records.INSTANCE.c.burned_in_annotation
    which = records.INSTANCE.c.sop_instance_uid.in_(sop_uids)
    with s.node.archive.engine.begin() as conn:
        conn.execute(update(records.INSTANCE).where(which).values(burned_in_annotation=None))
    clean, burned = images[0], images[1]
    # The first request is a WADO of one instance: its study is settled alone.
    assert s.get(_wado_path(s, burned)).status_code == 404
    (data,) = s.retrieve(_wado_path(s, clean))
    assert parse(data).SOPInstanceUID == s.mapper(clean.SOPInstanceUID)
    with s.node.archive.engine.connect() as conn:
        recorded = dict(
            conn.execute(select(records.INSTANCE.c.sop_instance_uid, column).where(which)).all()
        )
    assert recorded == {ds.SOPInstanceUID: ds is burned for ds in images}
    study = s.mapper(clean.StudyInstanceUID)
    expected = [s.mapper(ds.SOPInstanceUID) for ds in images if ds is not burned]
    assert _sops(s.search(f"studies/{study}/instances")) == expected


def test_studies_and_series_with_nothing_servable_are_not_listed(site: dict[str, Any]) -> None:
    """A study (or series) whose images all declare burned-in annotation holds nothing the
    credential may retrieve, so searches do not list it, even when its images were stored
    before the index recorded their declarations."""
    s: TrainingSite = site["site"]
    mrn = "MRN-AI-8"
    mixed, all_burned = generate_uid(), generate_uid()
    burned_series, clean_series = generate_uid(), generate_uid()
    images = [
        make_ct(mixed, burned_series, patient_id=mrn, seed=40),
        make_ct(mixed, burned_series, patient_id=mrn, seed=41),
        make_ct(mixed, clean_series, patient_id=mrn, seed=42),
        make_ct(all_burned, generate_uid(), patient_id=mrn, seed=43),
    ]
    for ds in images:
        ds.BurnedInAnnotation = "NO" if ds.SeriesInstanceUID == clean_series else "YES"
    s.store(images)
    s.link(mrn)
    s.grant(mrn)
    # As an archive upgraded to 0007 holds them: declarations not yet recorded.
    with s.node.archive.engine.begin() as conn:
        conn.execute(
            update(records.INSTANCE)
            .where(records.INSTANCE.c.study_uid.in_([mixed, all_burned]))
            .values(burned_in_annotation=None)
        )

    studies = _uids(s.search("studies"), "0020000D")
    assert s.mapper(mixed) in studies
    assert s.mapper(all_burned) not in studies
    series = _uids(s.search(f"studies/{s.mapper(mixed)}/series"), "0020000E")
    assert series == {s.mapper(clean_series)}
    assert s.get(f"studies/{s.mapper(all_burned)}/series").status_code in (204, 404)


def test_without_a_ledger_the_credential_gets_503_saying_why(tmp_path: Path) -> None:
    with serve_consent_node(tmp_path / "node", auth_enabled=True) as node:
        trainer = bearer(account_token(node.archive.settings, "t", "trainer", 60).access_token)
        r = httpx.get(f"{node.url}/dicom-web/studies", headers=trainer, timeout=60)
        assert r.status_code == 503
        assert "AI-training consent cannot be checked" in r.json()["error"]
        assert "no ledger deployment" in r.json()["error"]


def test_options_keep_dates_and_patient_characteristics(tmp_path: Path) -> None:
    with training_site(
        tmp_path / "node",
        deid_retain_full_dates=True,
        deid_retain_patient_characteristics=True,
    ) as s:
        ds = make_ct(patient_id=CONSENTED, study_date="20240115")
        ds.IssuerOfPatientID = ISSUER
        ds.PatientSex, ds.PatientAge = "F", "047Y"
        ds.PatientSize, ds.PatientWeight = "1.68", "61.5"
        ds.PatientBirthDate = "19770412"
        ds.SeriesDate = ds.AcquisitionDate = "20240115"
        s.store([ds])
        s.link(CONSENTED)
        s.grant(CONSENTED)
        (data,) = s.retrieve(_wado_path(s, ds))
        got = parse(data)
        assert (got.StudyDate, got.SeriesDate, got.AcquisitionDate) == ("20240115",) * 3
        assert (got.PatientSex, got.PatientAge) == ("F", "047Y")
        assert (float(got.PatientSize), float(got.PatientWeight)) == (1.68, 61.5)
        assert got["PatientBirthDate"].is_empty  # identifies the patient, not the episode
        assert got["PatientName"].is_empty and got["PatientID"].is_empty
        assert got.LongitudinalTemporalInformationModified == "UNMODIFIED"
        codes = [item.CodeValue for item in got.DeidentificationMethodCodeSequence]
        assert codes == ["113100", "113106", "113108"]
        # The dates it keeps are dates it may match on.
        (hit,) = s.search("studies", StudyDate="20240101-20241231", PatientSex="F")
        assert hit["00080020"]["Value"] == ["20240115"]
        assert s.search("studies", StudyDate="20230101-20231231") == []

        # A consent cache past its staleness bound gives no answer at all, never a stale one.
        cache = s.node.ledger.cache
        cache.stop()
        cache.mark_synced(cache.synced_block, at=0.0)
        stale = s.get("studies")
        assert stale.status_code == 503, stale.text
        assert "consent cache last synced" in stale.json()["error"]
        cache.sync()
        assert s.search("studies")
