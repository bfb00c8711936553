"""Accept-header negotiation for WADO-RS (RFC 9110 §12.5.1, PS3.18 §8.7)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.api.dicomweb.media import (
    MediaRange,
    negotiate_bulkdata,
    negotiate_instance,
    negotiate_metadata,
    negotiate_pixel_data,
    negotiate_rendered,
    parse_accept,
)
from node.errors import InvalidRequestError, NotAcceptableError

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
J2K = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JPEG = "1.2.840.10008.1.2.4.50"
MPEG2 = "1.2.840.10008.1.2.4.100"
DICOM = 'multipart/related; type="application/dicom"'


def test_parse_accept_orders_by_q_and_keeps_ties_in_order() -> None:
    ranges = parse_accept("image/png;q=0.5, image/jpeg, */*;q=0.1, image/gif")
    assert [r.media_type for r in ranges] == ["image/jpeg", "image/gif", "image/png", "*/*"]
    assert ranges[2].q == 0.5


def test_parse_accept_handles_quoted_commas_and_parameters() -> None:
    (only,) = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*')
    assert only == MediaRange(
        "multipart", "related", {"type": "application/dicom", "transfer-syntax": "*"}
    )
    assert only.part_type == "application/dicom"
    quoted = parse_accept('multipart/related; type="a/b, c"; x="q\\"z", image/png')
    assert quoted[0].params == {"type": "a/b, c", "x": 'q"z'}
    assert quoted[1].media_type == "image/png"


def test_parse_accept_drops_q_zero_and_defaults_to_anything() -> None:
    assert [r.media_type for r in parse_accept("image/png;q=0, image/jpeg")] == ["image/jpeg"]
    assert parse_accept(None) == [MediaRange("*", "*")]
    assert parse_accept("  ") == [MediaRange("*", "*")]
    assert [r.media_type for r in parse_accept("image/png,,")] == ["image/png"]


def test_media_types_and_parameter_names_are_case_insensitive() -> None:
    (only,) = parse_accept('Multipart/Related; Type="Application/DICOM"; Transfer-Syntax=1.2.3')
    assert only.part_type == "application/dicom"
    assert only.transfer_syntax == "1.2.3"


@pytest.mark.parametrize(
    "header",
    [
        "image",
        "image/",
        "*/png",
        "image/png; q=2",
        "image/png; q=abc",
        "image/png; q=0.12345",
        "image/png; novalue",
        'multipart/related; type="unterminated',
        "ima ge/png",
    ],
)
def test_malformed_accept_is_400(header: str) -> None:
    with pytest.raises(InvalidRequestError):
        parse_accept(header)


# --- instances (PS3.18 §8.7.3.5.2) ---------------------------------------------------------


def test_instance_default_is_explicit_vr_little_endian() -> None:
    """application/dicom without transfer-syntax means Explicit VR Little Endian."""
    chosen = negotiate_instance(DICOM, J2K)
    assert (chosen.media_type, chosen.transfer_syntax, chosen.multipart) == (
        "application/dicom",
        EXPLICIT,
        True,
    )
    assert chosen.content_type == f"application/dicom; transfer-syntax={EXPLICIT}"


def test_instance_star_and_wildcards_send_what_is_stored() -> None:
    assert negotiate_instance(f"{DICOM}; transfer-syntax=*", J2K).transfer_syntax == J2K
    assert negotiate_instance(None, J2K).transfer_syntax == J2K
    assert negotiate_instance("*/*", JPEG).transfer_syntax == JPEG
    single = negotiate_instance("application/dicom; transfer-syntax=*", IMPLICIT)
    assert single.multipart is False and single.transfer_syntax == IMPLICIT
    # A wildcard gets the resource's usual framing: multipart/related.
    assert negotiate_instance("*/*", IMPLICIT).multipart is True
    assert negotiate_instance("multipart/*", IMPLICIT).multipart is True


def test_instance_named_syntaxes_in_preference_order() -> None:
    header = (
        f"{DICOM}; transfer-syntax={JPEG}, {DICOM}; transfer-syntax={IMPLICIT};q=0.9, "
        f"{DICOM}; transfer-syntax={EXPLICIT};q=0.5"
    )
    # JPEG cannot be produced from J2K; Implicit VR LE is the best one that can.
    assert negotiate_instance(header, J2K).transfer_syntax == IMPLICIT
    # The stored syntax itself is always producible.
    assert negotiate_instance(header, JPEG).transfer_syntax == JPEG


def test_instance_offers_rle_and_j2k_lossless_encoding() -> None:
    assert negotiate_instance(f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.5", EXPLICIT)
    assert negotiate_instance(f"{DICOM}; transfer-syntax={J2K}", JPEG).transfer_syntax == J2K


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        (f"{DICOM}; transfer-syntax={JPEG}", J2K),
        (f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.80", EXPLICIT),
        (DICOM, MPEG2),  # no decoder for MPEG-2 video
        ("image/jpeg", EXPLICIT),
        ('multipart/related; type="application/octet-stream"', EXPLICIT),
    ],
)
def test_instance_not_acceptable(header: str, stored: str) -> None:
    with pytest.raises(NotAcceptableError):
        negotiate_instance(header, stored)


# --- frames and pixel bulk data (PS3.18 §8.7.3.3.2) -------------------------------------------


def test_native_pixels_go_as_octet_stream() -> None:
    for header in (None, "*/*", 'multipart/related; type="application/octet-stream"'):
        chosen = negotiate_pixel_data(header, IMPLICIT)
        assert (chosen.media_type, chosen.transfer_syntax) == ("application/octet-stream", EXPLICIT)


def test_compressed_pixels_go_as_stored_when_the_type_is_accepted() -> None:
    chosen = negotiate_pixel_data('multipart/related; type="image/jp2"', J2K_LOSSY)
    assert (chosen.media_type, chosen.transfer_syntax) == ("image/jp2", J2K_LOSSY)
    assert negotiate_pixel_data('multipart/related; type="*/*"', JPEG).media_type == "image/jpeg"
    rle = negotiate_pixel_data('multipart/related; type="image/x-dicom-rle"', "1.2.840.10008.1.2.5")
    assert rle.media_type == "image/dicom-rle"
    named = negotiate_pixel_data(
        f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG}', JPEG
    )
    assert named.transfer_syntax == JPEG


def test_octet_stream_with_any_syntax_sends_compressed_bytes() -> None:
    """OHIF-class viewers ask octet-stream with transfer-syntax=*: the stored bitstream."""
    header = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    chosen = negotiate_pixel_data(header, J2K)
    assert (chosen.media_type, chosen.transfer_syntax) == ("application/octet-stream", J2K)
    named = header.replace("*", J2K)
    assert negotiate_pixel_data(named, J2K).transfer_syntax == J2K


def test_compressed_pixels_are_decoded_for_plain_octet_stream() -> None:
    chosen = negotiate_pixel_data('multipart/related; type="application/octet-stream"', J2K)
    assert (chosen.media_type, chosen.transfer_syntax) == ("application/octet-stream", EXPLICIT)
    fallback = negotiate_pixel_data(
        'multipart/related; type="image/jpeg", '
        'multipart/related; type="application/octet-stream";q=0.5',
        J2K,
    )
    assert fallback.transfer_syntax == EXPLICIT


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        ('multipart/related; type="image/jpeg"', J2K),
        (f'multipart/related; type="image/jp2"; transfer-syntax={J2K}', J2K_LOSSY),
        ('multipart/related; type="image/png"', EXPLICIT),
        ('multipart/related; type="application/octet-stream"', MPEG2),
        ("application/dicom+json", EXPLICIT),
    ],
)
def test_pixel_data_not_acceptable(header: str, stored: str) -> None:
    with pytest.raises(NotAcceptableError):
        negotiate_pixel_data(header, stored)


# --- bulk data, metadata, rendered -------------------------------------------------------------


def test_bulkdata_is_octet_stream() -> None:
    assert negotiate_bulkdata(None).media_type == "application/octet-stream"
    assert negotiate_bulkdata('multipart/related; type="application/octet-stream"').multipart
    with pytest.raises(NotAcceptableError):
        negotiate_bulkdata("image/jpeg")


def test_metadata_is_dicom_json() -> None:
    assert negotiate_metadata(None) == "application/dicom+json"
    assert negotiate_metadata("application/json") == "application/json"
    assert negotiate_metadata("application/*") == "application/dicom+json"
    with pytest.raises(NotAcceptableError):
        negotiate_metadata('multipart/related; type="application/dicom+xml"')


def test_rendered_prefers_jpeg_and_honours_q() -> None:
    assert negotiate_rendered(None) == "image/jpeg"
    assert negotiate_rendered("image/*") == "image/jpeg"
    assert negotiate_rendered("image/jpeg;q=0.4, image/png") == "image/png"
    assert negotiate_rendered("text/html, image/png;q=0.1") == "image/png"
    with pytest.raises(NotAcceptableError):
        negotiate_rendered("image/gif, text/html")


# --- robustness: any header text is parsed or refused with 400, never a crash ----------------


_HEADER_ALPHABET = st.sampled_from(list('abcimgejp/*;,="q=0.51 -+\\\ttransfer-syntax12.'))


@settings(max_examples=300, deadline=None)
@given(st.text(_HEADER_ALPHABET, max_size=80) | st.text(max_size=40))
def test_any_accept_text_is_parsed_or_400(header: str) -> None:
    try:
        ranges = parse_accept(header)
    except InvalidRequestError:
        return
    assert all(0 < r.q <= 1 for r in ranges)
    for negotiate in (negotiate_rendered, negotiate_metadata, negotiate_bulkdata):
        with contextlib.suppress(NotAcceptableError):
            negotiate(header)
    for stored in (EXPLICIT, J2K):
        for pick in (negotiate_instance, negotiate_pixel_data):
            with contextlib.suppress(NotAcceptableError):
                pick(header, stored)
