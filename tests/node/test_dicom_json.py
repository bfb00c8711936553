"""DICOM JSON metadata (PS3.18 F.2): equal to pydicom's, bulk values behind path URIs."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.errors import InvalidRequestError, NotFoundError
from node.services.dicom_json import bulkdata, parse_path, to_dicom_json
from tests.node.test_imaging_samples import make_image, read, sample_bytes

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


@pytest.mark.parametrize("name", sorted(set(sample_bytes()) - {"badVR.dcm"}))
def test_metadata_equals_pydicom_json(name: str) -> None:
    """Every sample's metadata equals pydicom's DICOM JSON, bulk values replaced by URIs."""
    ds = read(name)
    theirs = ds.to_json_dict()
    assert to_dicom_json(ds) == theirs  # without URIs: exactly pydicom's
    ours = to_dicom_json(ds, bulkdata_uri=uri)
    assert ours["7FE00010"]["BulkDataURI"] == uri("7FE00010")
    assert assert_same_as_pydicom(ours, theirs, ds) >= 1
    json.dumps(ours)  # serialisable as it stands


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


def test_parse_path() -> None:
    assert parse_path("00540016/0/00181072") == [0x00540016, 0, 0x00181072]
