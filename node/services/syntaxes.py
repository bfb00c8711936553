"""Transfer syntaxes and media types the WADO-RS services produce (PS3.18 §8.7.3, PS3.5 §10).

Shared by the negotiation in `node.api.dicomweb.media` and the image services, so the routers
and the services agree on what each representation means.
"""

from __future__ import annotations

from dataclasses import dataclass

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"

# "*" in a transfer-syntax parameter: PS3.18 §8.7.3.5.2, any syntax the server chooses; this
# node then sends what it stores, unchanged.
ANY_TRANSFER_SYNTAX = "*"

APPLICATION_DICOM = "application/dicom"
APPLICATION_OCTET_STREAM = "application/octet-stream"
APPLICATION_DICOM_JSON = "application/dicom+json"
APPLICATION_JSON = "application/json"
IMAGE_JPEG = "image/jpeg"
IMAGE_PNG = "image/png"

# Transfer syntaxes `transcode` can produce from any decodable source (PS3.18 §8.7.3.5.2).
# RLE and JPEG 2000 lossless are encoded on demand by pydicom's encoders; the rest are
# re-encodings of the native pixel data.
TRANSCODE_TARGETS: frozenset[str] = frozenset(
    {
        EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        RLE_LOSSLESS,
        JPEG_2000_LOSSLESS,
    }
)

# Syntaxes whose pixel data is native (not encapsulated).
NATIVE_SYNTAXES: frozenset[str] = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

# PS3.18 Table 8.7.3-2 (pixel data media types): the media type of an encapsulated frame.
COMPRESSED_FRAME_MEDIA: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": IMAGE_JPEG,
    "1.2.840.10008.1.2.4.51": IMAGE_JPEG,
    "1.2.840.10008.1.2.4.57": IMAGE_JPEG,
    "1.2.840.10008.1.2.4.70": IMAGE_JPEG,
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    RLE_LOSSLESS: "image/dicom-rle",
}
# Older spellings some clients still send.
MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}

RENDERED_MEDIA: tuple[str, ...] = (IMAGE_JPEG, IMAGE_PNG)


@dataclass(frozen=True)
class Representation:
    """What a response carries: the payload media type, its transfer syntax, and framing.

    `transfer_syntax` is a UID (`ANY_TRANSFER_SYNTAX` never appears here: it is resolved to the
    stored syntax) or None where the media type has none (JSON, rendered images).
    """

    media_type: str
    transfer_syntax: str | None
    multipart: bool

    @property
    def content_type(self) -> str:
        """The Content-Type of one payload (a part of a multipart body, or the whole body)."""
        if self.transfer_syntax is None:
            return self.media_type
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"
