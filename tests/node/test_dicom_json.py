"""DICOM JSON metadata (PS3.18 F.2): equal to pydicom's, bulk values behind path URIs."""

from __future__ import annotations

import base64
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.errors import InvalidRequestError, NotFoundError
from node.services.dicom_json import (
    bulkdata,
    bulkdata_paths,
    parse_path,
    rebase_bulkdata,
    to_dicom_json,
)
from node.services.json_values import fast_json, text_codec
from tests.node.test_imaging_samples import dicom_file_bytes, make_image, read, sample_bytes

BIG_ENDIAN = "1.2.840.10008.1.2.2"


def uri(path: str) -> str:
    return f"https://node.test/bulk/{path}"


def assert_same_as_pydicom(
    ours: dict[str, Any], theirs: dict[str, Any], ds: Dataset, prefix: str = ""
) -> int:
    """Compare element by element; a BulkDataURI must name the bytes pydicom put inline."""
    assert ours.keys() == theirs.keys()
    bulk = 0
    for key, value in ours.items():
        expected = theirs[key]
        if "BulkDataURI" in value:
            assert value == {"vr": expected["vr"], "BulkDataURI": uri(prefix + key)}
            inline = base64.b64decode(expected["InlineBinary"])
            fetched = bulkdata(ds, prefix + key)
            if ds.file_meta.get("TransferSyntaxUID") == BIG_ENDIAN and expected["vr"] != "OB":
                assert len(fetched) == len(inline)  # swapped to little endian
            else:
                assert fetched == inline
            bulk += 1
        elif value.get("vr") == "SQ":
            assert len(value["Value"]) == len(expected["Value"])
            for index, (item, other) in enumerate(
                zip(value["Value"], expected["Value"], strict=True)
            ):
                bulk += assert_same_as_pydicom(item, other, ds, f"{prefix}{key}/{index}/")
        else:
            assert value == expected, key
    return bulk


@pytest.mark.parametrize("name", sorted(set(dicom_file_bytes()) - {"badVR.dcm"}))
def test_metadata_equals_pydicom_json(name: str) -> None:
    """Every sample's metadata equals pydicom's DICOM JSON, bulk values replaced by URIs.

    Every Part-10 file pydicom ships is used, images or not (SR, RT, the charset files).
    """
    ds = read(name)
    theirs = ds.to_json_dict()
    assert to_dicom_json(ds) == theirs  # without URIs: exactly pydicom's
    ours = to_dicom_json(ds, bulkdata_uri=uri)
    bulk = assert_same_as_pydicom(ours, theirs, ds)
    if "PixelData" in ds:
        assert ours["7FE00010"]["BulkDataURI"] == uri("7FE00010")
        assert bulk >= 1
    json.dumps(ours)  # serialisable as it stands
    # The same values go by URI as with pydicom's own handler (Pixel Data always does here).
    with_handler = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=str)
    if "7FE00010" in with_handler:
        with_handler["7FE00010"] = {"vr": with_handler["7FE00010"]["vr"], "BulkDataURI": ""}
    assert blind(ours) == blind(with_handler)


def blind(value: Any) -> Any:
    """DICOM JSON with every BulkDataURI value blanked (the URIs themselves differ)."""
    if isinstance(value, dict):
        if "BulkDataURI" in value:
            return {"vr": value["vr"], "BulkDataURI": ""}
        return {key: blind(item) for key, item in value.items()}
    if isinstance(value, list):
        return [blind(item) for item in value]
    return value


@pytest.mark.parametrize("name", ["CT_small.dcm", "chest-cr-philips-j2k.dcm", "MR_small_RLE.dcm"])
def test_header_without_pixels_gives_the_same_metadata(name: str) -> None:
    """A header read with stop_before_pixels plus pixel_data_vr equals the full instance's."""
    full = to_dicom_json(read(name), bulkdata_uri=uri)
    header = pydicom.dcmread(io.BytesIO(sample_bytes()[name]), stop_before_pixels=True)
    vr = full["7FE00010"]["vr"]
    before_pixels = {key: value for key, value in full.items() if key <= "7FE00010"}
    # stop_before_pixels also drops what follows Pixel Data (trailing padding).
    assert to_dicom_json(header, bulkdata_uri=uri, pixel_data_vr=vr) == before_pixels


def test_large_values_of_a_deferred_read_are_not_loaded(tmp_path: Path) -> None:
    """With defer_size, bulk values become URIs without reading them (file already closed)."""
    path = tmp_path / "instance.dcm"
    path.write_bytes(sample_bytes()["chest-cr-philips-j2k.dcm"])
    with path.open("rb") as f:
        ds = pydicom.dcmread(f, defer_size=1024)
    path.unlink()  # any attempt to read a deferred value now fails
    ours = to_dicom_json(ds, bulkdata_uri=uri)
    assert ours["7FE00010"] == {"vr": "OB", "BulkDataURI": uri("7FE00010")}
    assert ours["00100020"] == to_dicom_json(read("chest-cr-philips-j2k.dcm"))["00100020"]


def test_invalid_element_is_left_out_not_fatal() -> None:
    """badVR.dcm's unparsable Number of Frames is left out; everything else is kept."""
    ds = read("badVR.dcm")
    ours = to_dicom_json(ds, bulkdata_uri=uri)
    assert "00280008" not in ours
    theirs = ds.to_json_dict(suppress_invalid_tags=True)
    assert set(theirs) <= set(ours)
    assert ours["00100010"] == theirs["00100010"]


def nested_lut_dataset() -> Dataset:
    """An image with a VOI LUT whose 2 KiB table sits inside a sequence item."""
    ds = make_image(np.arange(64, dtype=np.uint16).reshape(8, 8))
    item = Dataset()
    item.LUTDescriptor = [1024, 0, 16]
    item.LUTData = bytes(range(256)) * 8
    item["LUTData"].VR = "OW"
    item.LUTExplanation = "ramp"
    small = Dataset()
    small.LUTDescriptor = [4, 0, 16]
    small.LUTData = b"\x01\x00\x02\x00\x03\x00\x04\x00"
    small["LUTData"].VR = "OW"
    ds.VOILUTSequence = [small, item]
    return ds


def test_nested_bulk_value_gets_its_path() -> None:
    """A large value in item 1 of VOI LUT Sequence is "00283010/1/00283006"; small stays inline."""
    ds = nested_lut_dataset()
    ours = to_dicom_json(ds, bulkdata_uri=uri)
    items = ours["00283010"]["Value"]
    assert items[1]["00283006"] == {"vr": "OW", "BulkDataURI": uri("00283010/1/00283006")}
    assert "InlineBinary" in items[0]["00283006"]
    assert bulkdata(ds, "00283010/1/00283006") == bytes(range(256)) * 8
    assert bulkdata(ds, "7FE00010") == ds.PixelData


def test_pixel_data_is_always_a_uri_and_threshold_applies_to_the_rest() -> None:
    """Even 128 bytes of Pixel Data go by URI; the threshold moves other values inline."""
    ds = nested_lut_dataset()
    assert len(ds.PixelData) == 128
    ours = to_dicom_json(ds, bulkdata_uri=uri, threshold=4096)
    assert "BulkDataURI" in ours["7FE00010"]
    assert "InlineBinary" in ours["00283010"]["Value"][1]["00283006"]


def test_big_endian_bulk_values_come_back_little_endian() -> None:
    """MR_small_bigendian's 16-bit Pixel Data is served little endian (octet-stream default)."""
    ds = read("MR_small_bigendian.dcm")
    value = bulkdata(ds, "7FE00010")
    assert value[:2] == ds.PixelData[1::-1]


@pytest.mark.parametrize("path", ["7FE0001", "7FE00010/0", "zzzzzzzz", "00283010/x/00283006", ""])
def test_malformed_paths_are_400(path: str) -> None:
    with pytest.raises(InvalidRequestError):
        bulkdata(nested_lut_dataset(), path)


@pytest.mark.parametrize(
    "path", ["00283006", "00283010/2/00283006", "00100010/0/00283006", "00283010/1/00283003"]
)
def test_missing_or_non_bulk_paths_are_404(path: str) -> None:
    """Absent attributes, items past the end, non-sequences and text values are not found."""
    with pytest.raises(NotFoundError):
        bulkdata(nested_lut_dataset(), path)


def test_json_cached_with_paths_rebases_to_request_uris() -> None:
    """JSON built once with bare paths equals the per-request JSON after rebasing."""
    ds = nested_lut_dataset()
    cached = to_dicom_json(ds, bulkdata_uri=bulkdata_paths)
    assert cached["7FE00010"]["BulkDataURI"] == "7FE00010"
    rebased = rebase_bulkdata(cached, "https://node.test/bulk/")
    assert rebased == to_dicom_json(ds, bulkdata_uri=uri)
    assert cached["7FE00010"]["BulkDataURI"] == "7FE00010"  # the cached copy is untouched
    assert json.loads(json.dumps(cached)) == cached


def test_parse_path() -> None:
    assert parse_path("00540016/0/00181072") == [0x00540016, 0, 0x00181072]


_FAST_VRS = [
    "AE",
    "AS",
    "CS",
    "DA",
    "DT",
    "TM",
    "UI",
    "SH",
    "LO",
    "UC",
    "ST",
    "LT",
    "UT",
    "IS",
    "DS",
]
_ALPHABET = st.sampled_from(list(" \\\x00.+-eE0123456789ABCabc^=é"))


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(_FAST_VRS),
    st.text(_ALPHABET, max_size=24),
    st.sampled_from([["iso8859"], ["latin_1"], ["utf_8"]]),
)
def test_fast_string_values_match_pydicom(vr: str, text: str, encodings: list[str]) -> None:
    """Raw string values read directly give exactly pydicom's JSON, or are left to pydicom."""
    codec = text_codec(encodings)
    value = text.encode(codec or "latin_1", errors="replace")
    if len(value) % 2:
        value += b" "
    check_fast_against_pydicom(vr, value, encodings)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"]), st.binary(max_size=24))
def test_fast_binary_values_match_pydicom(vr: str, value: bytes) -> None:
    check_fast_against_pydicom(vr, value, ["iso8859"])


def check_fast_against_pydicom(vr: str, value: bytes, encodings: list[str]) -> None:
    raw = RawDataElement(Tag(0x00091010), vr, len(value), value, 0, False, True)
    ours = fast_json(raw, text_codec(encodings))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = convert_raw_data_element(raw, encoding=encodings).to_json_dict(None, 0)
    except Exception:
        return  # pydicom refuses the value; the fast path may still read it
    if ours is not None:
        assert ours == theirs
        assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs))
