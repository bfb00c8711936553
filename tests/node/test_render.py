"""Rendered and thumbnail resources (PS3.18 §8.3.5.1): grey values, colour, viewport, formats."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.pixels.processing import apply_color_lut

from node.errors import InvalidRequestError, NotAcceptableError, NotFoundError
from node.services.render import (
    Viewport,
    Window,
    parse_rendering_query,
    parse_viewport,
    parse_window,
    render,
    thumbnail,
)
from tests.node.test_imaging_samples import (
    UNDECODABLE,
    decodable_names,
    make_image,
    read,
    reference_pixels,
)

RAMP = np.arange(256, dtype=np.uint16).reshape(16, 16)


def png_pixels(data: bytes) -> np.ndarray[Any, Any]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def ramp_png(**kwargs: Any) -> np.ndarray[Any, Any]:
    attributes = kwargs.pop("attributes", {})
    photometric = kwargs.pop("photometric", "MONOCHROME2")
    ds = make_image(RAMP, photometric=photometric, **attributes)
    return png_pixels(render(ds, media_type="image/png", **kwargs))


def test_linear_window_of_full_range_is_identity() -> None:
    """LINEAR c=128 w=256 maps 0..255 onto itself exactly (PS3.3 C.11.2.1.2.1)."""
    assert np.array_equal(ramp_png(window=(128, 256, "LINEAR")), RAMP)


def test_linear_exact_window_hand_values() -> None:
    """LINEAR_EXACT c=100 w=50: 75 and below black, above 125 white, 76 → 5, 100 → 128."""
    out = ramp_png(window=Window(100, 50, "LINEAR_EXACT")).ravel()
    assert out[0] == 0 and out[75] == 0
    assert out[76] == 5  # ((76 - 100) / 50 + 0.5) * 255 = 5.1
    assert out[100] == 128  # 127.5 rounds half up
    assert out[125] == 255 and out[126] == 255 and out[255] == 255


def test_linear_window_hand_values() -> None:
    """LINEAR c=100 w=51: 74 and below black, above 124 white, 100 → 130."""
    out = ramp_png(window=Window(100, 51, "LINEAR")).ravel()
    assert out[74] == 0
    assert out[75] == 3  # ((75 - 99.5) / 50 + 0.5) * 255 = 2.55
    assert out[100] == 130  # ((100 - 99.5) / 50 + 0.5) * 255 = 130.05
    assert out[124] == 252 and out[125] == 255  # 124: 252.45


def test_sigmoid_window_hand_values() -> None:
    """SIGMOID c=128 w=64: 128 → 128, 160 → 225, 96 → 30 (PS3.3 C.11.2.1.3.1)."""
    out = ramp_png(window=Window(128, 64, "SIGMOID")).ravel()
    assert out[128] == 128  # 127.5 rounds half up
    assert out[160] == 225  # 255 / (1 + e^-2) = 224.66
    assert out[96] == 30  # 255 / (1 + e^2) = 30.34


def test_signed_ct_window_hand_values() -> None:
    """Signed CT values -1024..1016, window 40/400: 40 HU → 128, 48 HU → 133, 216 HU → 240."""
    ct = np.arange(-1024, 1024, 8, dtype=np.int16).reshape(16, 16)
    ds = make_image(ct, signed=True, RescaleSlope=1, RescaleIntercept=0)
    out = png_pixels(render(ds, media_type="image/png", window=(40, 400, "LINEAR"))).ravel()
    values = ct.ravel()
    assert out[values == 40][0] == 128  # ((40 - 39.5) / 399 + 0.5) * 255 = 127.8
    assert out[values == 48][0] == 133
    assert out[values == 216][0] == 240
    assert out[values <= -160].max() == 0 and out[values >= 240].min() == 255


def test_float_pixel_data_renders_min_to_max() -> None:
    """Float Pixel Data renders through the same pipeline; min..max spans 0..255."""
    values = np.linspace(-1.5, 2.5, 20, dtype=np.float32).reshape(4, 5)
    ds = make_image(values.view(np.uint32))
    del ds.PixelData
    del ds.PixelRepresentation
    ds.FloatPixelData = values.tobytes()
    out = png_pixels(render(ds, media_type="image/png"))
    assert out[0, 0] == 0 and out[-1, -1] == 255
    assert np.all(np.diff(out.ravel().astype(int)) > 0)


def test_image_window_is_used_without_a_query_window() -> None:
    """Window Center/Width stored in the image apply when the query names none."""
    out = ramp_png(attributes={"WindowCenter": [128, 40], "WindowWidth": [256, 10]})
    assert np.array_equal(out, RAMP)
    narrow = ramp_png(attributes={"WindowCenter": 100, "WindowWidth": 51})
    assert narrow.ravel()[100] == 130


def test_query_window_overrides_the_image_window() -> None:
    out = ramp_png(window=(128, 256, "LINEAR"), attributes={"WindowCenter": 10, "WindowWidth": 2})
    assert np.array_equal(out, RAMP)


def test_rescale_applies_before_the_window() -> None:
    """Slope 2, intercept -100: stored 100 is modality 100, the window's center → 130."""
    out = ramp_png(
        window=Window(100, 51, "LINEAR"),
        attributes={"RescaleSlope": 2, "RescaleIntercept": -100},
    ).ravel()
    assert out[100] == 130
    assert out[87] == 0  # modality 74
    assert out[113] == 255  # modality 126


def test_min_max_default_window() -> None:
    """No window anywhere: the frame's min..max spans black..white."""
    ds = make_image((RAMP * 10 + 1000).astype(np.uint16))
    assert np.array_equal(png_pixels(render(ds, media_type="image/png")), RAMP)


def test_voi_lut_sequence_is_applied() -> None:
    """A VOI LUT Sequence (no window) maps through its table, scaled to 8 bits."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))
    item["LUTData"].VR = "US"
    ds = make_image(RAMP)
    ds.VOILUTSequence = [item]
    assert np.array_equal(png_pixels(render(ds, media_type="image/png")), 255 - RAMP)


def test_monochrome1_is_inverted_so_bone_is_white() -> None:
    """MONOCHROME1: high stored values are dark, so the rendered grey is 255 - value."""
    out = ramp_png(photometric="MONOCHROME1", window=(128, 256, "LINEAR"))
    assert np.array_equal(out, 255 - RAMP)


def test_presentation_lut_shape_inverse() -> None:
    """INVERSE inverts MONOCHROME2; on MONOCHROME1 (as DX requires) it does not undo it."""
    window = (128, 256, "LINEAR")
    inverse = {"PresentationLUTShape": "INVERSE"}
    assert np.array_equal(ramp_png(window=window, attributes=inverse), 255 - RAMP)
    both = ramp_png(photometric="MONOCHROME1", window=window, attributes=inverse)
    assert np.array_equal(both, 255 - RAMP)
    identity = ramp_png(window=window, attributes={"PresentationLUTShape": "IDENTITY"})
    assert np.array_equal(identity, RAMP)


def test_real_monochrome1_chest_renders_with_dark_air() -> None:
    """The real MONOCHROME1 chest CR renders with dark corners (air) and a bright centre."""
    ds = read("chest-cr-philips-j2k.dcm")
    out = np.asarray(Image.open(io.BytesIO(thumbnail(ds, (256, 256), "image/png"))))
    h, w = out.shape
    corner = out[: h // 8, : w // 8].mean()
    mediastinum = out[h // 3 : 2 * h // 3, w // 2 - w // 16 : w // 2 + w // 16].mean()
    assert mediastinum > corner + 40


def test_rgb_png_keeps_the_colours() -> None:
    """An RGB image renders to PNG with exactly its pixel values."""
    name = "examples_rgb_color.dcm"
    assert np.array_equal(
        png_pixels(render(read(name), media_type="image/png")), reference_pixels(name)
    )


def test_ybr_jpeg_renders_as_rgb() -> None:
    name = "SC_rgb_dcmtk_+eb+cy+np.dcm"
    out = png_pixels(render(read(name), media_type="image/png"))
    assert np.array_equal(out, reference_pixels(name))


def test_palette_colour_is_applied() -> None:
    """PALETTE COLOR renders through its palette (8-bit of the 16-bit palette entries)."""
    name = "examples_palette.dcm"
    ds = read(name)
    expected = apply_color_lut(reference_pixels(name), ds)
    if expected.dtype.itemsize > 1:
        expected = (expected >> 8).astype(np.uint8)
    assert np.array_equal(png_pixels(render(ds, media_type="image/png")), expected)


def test_sixteen_bit_rgb_is_scaled_to_eight_bits() -> None:
    name = "SC_rgb_rle_16bit.dcm"
    out = png_pixels(render(read(name), media_type="image/png"))
    assert np.array_equal(out, (reference_pixels(name) >> 8).astype(np.uint8))


def test_second_frame_of_a_multiframe() -> None:
    """frame=2 renders the second frame, not the first."""
    name = "SC_rgb_rle_2frame.dcm"
    ref = reference_pixels(name)
    assert not np.array_equal(ref[0], ref[1])
    assert np.array_equal(png_pixels(render(read(name), frame=2, media_type="image/png")), ref[1])


def test_viewport_fits_keeping_aspect_ratio() -> None:
    """The 1841x1955 chest in a 512x512 viewport is 482x512."""
    image = Image.open(io.BytesIO(render(read("chest-cr-philips-j2k.dcm"), viewport=(512, 512))))
    assert image.format == "JPEG"
    assert image.size == (482, 512)


def test_viewport_region_crops_and_flips() -> None:
    """viewport=8,16,4,0,8,16 shows columns 4..11 unscaled; a negative width mirrors them."""
    assert np.array_equal(
        ramp_png(window=(128, 256, "LINEAR"), viewport=(8, 16, 4, 0, 8, 16)), RAMP[:, 4:12]
    )
    flipped = ramp_png(window=(128, 256, "LINEAR"), viewport=(8, 16, 4, 0, -8, 16))
    assert np.array_equal(flipped, RAMP[:, 4:12][:, ::-1])


def test_viewport_region_outside_the_image_is_400() -> None:
    with pytest.raises(InvalidRequestError):
        render(make_image(RAMP), viewport=Viewport(8, 8, 40, 0))


def test_quality_changes_jpeg_size() -> None:
    ds = read("mr-j2k-lossless.dcm")
    assert len(render(ds, quality=10)) < len(render(ds, quality=95))


def test_thumbnail_fits_128() -> None:
    image = Image.open(io.BytesIO(thumbnail(read("us-multiframe-rgb.dcm"))))
    assert image.format == "JPEG"
    assert image.size == (128, 96)


@pytest.mark.parametrize("name", decodable_names())
def test_every_sample_renders_to_jpeg_and_png(name: str) -> None:
    """Every decodable sample renders to a JPEG and a PNG of its own size."""
    ds = read(name)
    for media_type, fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG")):
        image = Image.open(io.BytesIO(render(ds, media_type=media_type)))
        image.load()
        assert image.format == fmt
        assert image.size == (ds.Columns, ds.Rows)
        assert image.mode in ("L", "RGB")


@pytest.mark.parametrize("name", sorted(UNDECODABLE))
def test_undecodable_samples_are_406(name: str) -> None:
    with pytest.raises(NotAcceptableError):
        render(read(name))


def test_frame_out_of_range_is_404_and_gif_is_406() -> None:
    ds = read("CT_small.dcm")
    with pytest.raises(NotFoundError):
        render(ds, frame=2)
    with pytest.raises(NotAcceptableError):
        render(ds, media_type="image/gif")


def test_parse_rendering_query() -> None:
    options = parse_rendering_query(
        {"window": "40,400,linear-exact", "viewport": "256,256", "quality": "80"}
    )
    assert options.window == Window(40.0, 400.0, "LINEAR_EXACT")
    assert options.viewport == Viewport(256, 256)
    assert options.quality == 80
    region = parse_rendering_query([("viewport", "64,64,,,32,-32"), ("annotation", "patient")])
    assert region.viewport == Viewport(64, 64, 0, 0, 32, -32)
    assert region.annotation == ("patient",)
    assert parse_rendering_query({}).window is None


@pytest.mark.parametrize(
    "query",
    [
        {"window": "40"},
        {"window": "a,400"},
        {"window": "40,0,linear"},
        {"window": "40,0.5,linear"},
        {"window": "40,400,cubic"},
        {"window": "40,nan"},
        {"viewport": "0,10"},
        {"viewport": "10"},
        {"viewport": "10,10,1,2,3"},
        {"viewport": "99999,10"},
        {"viewport": "10,10,-1,0,5,5"},
        {"quality": "0"},
        {"quality": "101"},
        {"quality": "high"},
        {"annotation": "everything"},
        {"iccprofile": "cmyk"},
        {"bogus": "1"},
    ],
)
def test_parse_rendering_query_rejects(query: dict[str, str]) -> None:
    with pytest.raises(InvalidRequestError):
        parse_rendering_query(query)


def test_repeated_query_parameter_is_400() -> None:
    with pytest.raises(InvalidRequestError, match="repeated"):
        parse_rendering_query([("quality", "10"), ("quality", "20")])


def test_parse_helpers() -> None:
    assert parse_window("1,2") == Window(1.0, 2.0, "LINEAR")
    assert parse_window("1.5,2.5,SIGMOID") == Window(1.5, 2.5, "SIGMOID")
    assert parse_viewport("3,4,1,2,5,6") == Viewport(3, 4, 1, 2, 5, 6)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["window", "viewport", "quality", "annotation", "iccprofile"]),
        st.text(st.sampled_from(list("0123456789,-.eEnaiflr x")), max_size=30),
    )
)
def test_any_rendering_query_is_parsed_or_400(query: dict[str, str]) -> None:
    try:
        options = parse_rendering_query(query)
    except InvalidRequestError:
        return
    if options.quality is not None:
        assert 1 <= options.quality <= 100
    if options.viewport is not None:
        assert options.viewport.width > 0 and options.viewport.height > 0
