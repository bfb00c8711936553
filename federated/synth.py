"""Synthetic chest X-rays: valid DICOM DX "for presentation" with learnable findings.

Each image is drawn as a map of X-ray attenuation on a unit square (x: 0 = image left = the
patient's right in a PA view; y: 0 = top) — body, lungs with vascular markings, ribs, clavicles,
spine, heart, diaphragm domes, gastric bubble — to which each of the nine findings adds its
classic radiographic sign. Sites differ in label prevalence (each site has a few locally rare
findings) and in scanner (matrix size, noise, gamma, bit depth, MONOCHROME1), so a federation of
them is non-IID. Everything is a pure function of (seed, site, image index).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from federated.task import FINDINGS

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")  # PS3.4 B.5: Digital X-Ray Image Storage
LABELS_CSV = "labels.csv"
LABEL_COLUMNS: tuple[str, ...] = ("file", "sop_instance_uid", "study_instance_uid", "patient_id")
IMPLEMENTATION_UID = UID(
    "1.2.826.0.1.3680043.8.498.1"
)  # pydicom's root; ours is "2.25." per instance
_BASE_PREVALENCE = 0.30
_RARE_PREVALENCE = 0.10


class SynthError(ValueError):
    """Raised for arguments that cannot produce a data set."""


@dataclass(frozen=True)
class Scanner:
    """Per-site acquisition differences that make sites non-IID in appearance."""

    matrix: int  # rows = columns of the stored image
    noise: float  # quantum noise standard deviation, in [0, 1] display units
    gamma: float  # detector response curve
    bits_stored: int
    monochrome1: bool
    blur_cells: int  # 0 = sharp; else a low-pass by down/up-sampling to this many pixels
    manufacturer: str
    model: str


def site_scanner(site_index: int, image_size: int) -> Scanner:
    """The scanner of site ``site_index`` (0-based): a fixed cycle of five profiles."""
    profiles = [
        (1.00, 0.015, 1.00, 12, False, 0, "Synthetic Radiography Co", "SynthDR 100"),
        (0.75, 0.040, 0.80, 14, True, 0, "Imaginary Imaging Ltd", "FakeRay CR-2"),
        (1.25, 0.025, 1.25, 12, False, 1, "Synthetic Radiography Co", "SynthDR 300"),
        (0.875, 0.030, 1.10, 16, True, 0, "Placeholder Medical", "Mock DX"),
        (1.125, 0.020, 0.90, 14, False, 1, "Imaginary Imaging Ltd", "FakeRay DX-5"),
    ]
    scale, noise, gamma, bits, mono1, blur, maker, model = profiles[site_index % len(profiles)]
    matrix = max(32, round(image_size * scale / 2) * 2)
    return Scanner(
        matrix, noise, gamma, bits, mono1, (matrix * 2) // 3 if blur else 0, maker, model
    )


def site_prevalence(site_index: int) -> np.ndarray:
    """Label prevalence per finding at a site: three locally rare findings per site."""
    prev = np.full(len(FINDINGS), _BASE_PREVALENCE)
    for j in range(len(FINDINGS)):
        if (j + site_index) % 3 == 0:
            prev[j] = _RARE_PREVALENCE
    return prev


# ---------------------------------------------------------------------------------------------
# Drawing


class _Canvas:
    """Coordinate grids and helpers for one image of n x n pixels on the unit square."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.n = n
        self.rng = rng
        coords = (np.arange(n, dtype=np.float32) + 0.5) / n
        self.y, self.x = np.meshgrid(coords, coords, indexing="ij")

    def smooth_noise(self, cells: int) -> np.ndarray:
        """Gaussian-like noise with a correlation length of about 1/cells, unit std."""
        small = self.rng.standard_normal((cells, cells)).astype(np.float32)
        big = np.asarray(
            Image.fromarray(small, mode="F").resize((self.n, self.n), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        return big / max(float(big.std()), 1e-6)

    def ellipse(self, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        """Normalised squared radius ((x-cx)/ax)^2 + ((y-cy)/ay)^2 (inside where < 1)."""
        return ((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2

    def soft(self, r2: np.ndarray, edge: float = 0.15) -> np.ndarray:
        """Soft-edged mask from a normalised squared radius: 1 inside, 0 outside."""
        return np.clip((1.0 - r2) / edge, 0.0, 1.0)

    def band(self, dist: np.ndarray, half_width: float) -> np.ndarray:
        """Soft band of the given half width around the zero set of a distance field."""
        return np.clip(1.0 - np.abs(dist) / half_width, 0.0, 1.0)


@dataclass
class _Anatomy:
    lung_cx: tuple[float, float]
    lung_ax: tuple[float, float]
    lung_top: float
    dome_y: list[float]  # dome apex y per side (0 = image left = patient right)
    heart_cx: float
    heart_cy: float
    heart_ax: float
    heart_ay: float


def _dome(c: _Canvas, side: int, anat: _Anatomy) -> np.ndarray:
    """Diaphragm height y(x) for a side: a parabola, highest at the lung's centre."""
    cx, ax = anat.lung_cx[side], anat.lung_ax[side]
    return anat.dome_y[side] + 0.07 * ((c.x - cx) / ax) ** 2


def _lung_mask(c: _Canvas, side: int, anat: _Anatomy, cut: bool = True) -> np.ndarray:
    cx, ax = anat.lung_cx[side], anat.lung_ax[side]
    bottom = anat.dome_y[side] + 0.07
    cy = (anat.lung_top + bottom) / 2
    ay = (bottom - anat.lung_top) / 2
    # Wider at the base than at the apex, like a real lung.
    widen = 0.75 + 0.35 * np.clip((c.y - anat.lung_top) / (2 * ay), 0, 1)
    r2 = ((c.x - cx) / (ax * widen)) ** 2 + ((c.y - cy) / (ay * 1.15)) ** 2
    inside = c.soft(r2, 0.12)
    if not cut:
        return inside
    below = np.clip((c.y - _dome(c, side, anat)) / 0.01, 0.0, 1.0)
    return inside * (1.0 - below)


def _draw(c: _Canvas, labels: np.ndarray) -> np.ndarray:
    """Attenuation map in about [0, 1] (1 = bone-bright) for one patient with these labels."""
    rng = c.rng
    j = {name: i for i, name in enumerate(FINDINGS)}

    def jit(spread: float) -> float:
        return float(rng.uniform(-spread, spread))

    anat = _Anatomy(
        lung_cx=(0.31 + jit(0.015), 0.69 + jit(0.015)),
        lung_ax=(0.16 + jit(0.01), 0.16 + jit(0.01)),
        lung_top=0.13 + jit(0.02),
        dome_y=[0.68 + jit(0.02), 0.71 + jit(0.02)],
        heart_cx=0.55 + jit(0.01),
        heart_cy=0.56 + jit(0.01),
        heart_ax=0.145 + jit(0.01),
        heart_ay=0.12 + jit(0.008),
    )
    atel_side = int(rng.integers(2))
    if labels[j["atelectasis"]]:
        anat.dome_y[atel_side] -= 0.06  # volume loss pulls the hemidiaphragm up
    if labels[j["cardiomegaly"]]:
        anat.heart_ax = 0.205 + jit(0.01)  # cardiothoracic ratio about 0.55-0.6 against 0.4
        anat.heart_ay = 0.14 + jit(0.008)
        anat.heart_cx += 0.015

    body = c.soft(c.ellipse(0.5, 0.58, 0.47 + jit(0.02), 0.62), 0.05)
    img = 0.05 + 0.42 * body
    # Abdomen below the domes is soft tissue; the liver under the right dome slightly denser.
    lungs = [_lung_mask(c, s, anat) for s in (0, 1)]
    lung_any = np.maximum(lungs[0], lungs[1])
    lungs_full = [_lung_mask(c, s, anat, cut=False) for s in (0, 1)]

    # Lungs: air (dark) with vascular markings that fade from the hila to the periphery.
    markings = np.abs(c.smooth_noise(24)) * 0.5 + np.abs(c.smooth_noise(48)) * 0.3
    hilum = [(anat.lung_cx[0] + 0.07, 0.45), (anat.lung_cx[1] - 0.07, 0.45)]
    fade = np.maximum(*[np.exp(-(((c.x - hx) ** 2 + (c.y - hy) ** 2) / 0.03)) for hx, hy in hilum])
    lung_tissue = 0.16 + 0.07 * markings * (0.35 + fade)
    lung_density = lung_tissue.copy()

    # --- findings that change the lung parenchyma -----------------------------------------
    if labels[j["pneumothorax"]]:
        side = int(rng.integers(2))
        cx = anat.lung_cx[side]
        lateral = -1 if side == 0 else 1
        # The collapsed lung edge: a curve parallel to the apex and lateral wall.
        ptx_r2 = c.ellipse(cx - lateral * 0.03, 0.40, anat.lung_ax[side] * 0.78, 0.25)
        edge = np.sqrt(ptx_r2)
        outside = np.clip((edge - 1.0) / 0.02, 0, 1) * lungs[side]
        lung_density = lung_density * (1 - outside) + 0.07 * outside  # no markings, blacker
        pleural_line = c.band(edge - 1.0, 0.012) * lungs[side]
        lung_density += 0.22 * pleural_line
    if labels[j["fibrosis"]]:
        warp = c.smooth_noise(10) * 0.02
        freq = 42.0
        net = np.maximum(
            c.band(np.sin(freq * (c.x + warp)), 0.35), c.band(np.sin(freq * (c.y - warp)), 0.35)
        )
        zone = np.clip((c.y - 0.35) / 0.2, 0, 1)  # basal predominance, as in UIP
        lung_density += 0.28 * net * zone * (0.6 + 0.4 * np.abs(c.smooth_noise(6)))
    if labels[j["consolidation"]]:
        side = int(rng.integers(2))
        cx = anat.lung_cx[side] + jit(0.04)
        cy = float(rng.uniform(0.45, 0.6))
        region = c.soft(c.ellipse(cx, cy, 0.11 + jit(0.02), 0.10 + jit(0.02)), 0.4)
        patch = np.clip(0.6 + 0.5 * c.smooth_noise(16), 0, 1) * region * lungs[side]
        # Air bronchograms: dark branching tubes within the opacity, radiating from the hilum.
        hx, hy = hilum[side]
        angle = np.arctan2(c.y - hy, c.x - hx)
        base = float(np.arctan2(cy - hy, cx - hx))
        tubes = sum(c.band(np.sin(angle - base - off), 0.05) for off in (-0.25, 0.0, 0.25))
        lung_density += 0.45 * patch * (1 - 0.7 * np.clip(tubes, 0, 1))
    if labels[j["atelectasis"]]:
        side = atel_side
        cx = anat.lung_cx[side]
        slope = float(rng.uniform(-0.35, 0.35))
        y0 = anat.dome_y[side] - float(rng.uniform(0.07, 0.13))
        line = c.band(c.y - (y0 + slope * (c.x - cx)), 0.018 + jit(0.004))
        wedge = c.soft(c.ellipse(cx + (0.06 if side == 0 else -0.06), y0 + 0.03, 0.08, 0.05), 0.5)
        lung_density += (0.35 * line + 0.15 * wedge) * lungs[side]
    if labels[j["nodule"]]:
        side = int(rng.integers(2))
        cx = anat.lung_cx[side] + jit(0.07)
        cy = float(rng.uniform(0.25, 0.55))
        radius = float(rng.uniform(0.032, 0.048))
        lung_density += 0.42 * c.soft(c.ellipse(cx, cy, radius, radius), 0.25) * lungs[side]
    if labels[j["calcification"]]:
        side = int(rng.integers(2))
        cx = anat.lung_cx[side] + jit(0.06)
        cy = float(rng.uniform(0.25, 0.55))
        for _ in range(int(rng.integers(4, 8))):
            dx, dy, r = jit(0.05), jit(0.05), float(rng.uniform(0.010, 0.016))
            lung_density += 0.75 * c.soft(c.ellipse(cx + dx, cy + dy, r, r), 0.3) * lungs[side]

    img = img * (1 - lung_any) + lung_density * lung_any

    # Mediastinum and spine (over everything central), vertebrae as periodic bodies.
    spine_x = 0.5 + jit(0.008)
    spine = c.band(c.x - spine_x, 0.045) ** 0.3 * (c.y > 0.05) * body
    vertebrae = 0.8 + 0.2 * np.cos(2 * np.pi * c.y / 0.065)
    img = np.maximum(img, 0.42 * body * c.band(c.x - spine_x, 0.1) ** 0.5)
    img += 0.20 * spine * vertebrae

    # Heart: soft-tissue density overlapping the lungs and mediastinum.
    heart = c.soft(c.ellipse(anat.heart_cx, anat.heart_cy, anat.heart_ax, anat.heart_ay), 0.1)
    img = np.maximum(img, 0.5 * heart + img * (1 - heart))

    # Diaphragm and abdomen: soft tissue below each dome.
    for side in (0, 1):
        dome = _dome(c, side, anat)
        half = (c.x < 0.5) if side == 0 else (c.x >= 0.5)
        below = np.clip((c.y - dome) / 0.008, 0, 1) * half * body
        img = img * (1 - below) + (0.52 + (0.04 if side == 0 else 0.0)) * below
    # Gastric bubble: normal air under the left dome (makes free air a distinct sign).
    gx = anat.lung_cx[1] + jit(0.02)
    gy = anat.dome_y[1] + 0.07 + 0.045
    bubble = c.soft(c.ellipse(gx, gy, 0.045, 0.03), 0.3)
    img = img * (1 - 0.55 * bubble) + 0.2 * 0.55 * bubble

    if labels[j["pneumoperitoneum"]]:
        # Free air: a thin dark crescent hugging the underside of the (right) dome.
        for side in (0, 1) if rng.random() < 0.5 else (0,):
            dome = _dome(c, side, anat)
            thickness = float(rng.uniform(0.018, 0.028))
            span = c.soft(((c.x - anat.lung_cx[side]) / (anat.lung_ax[side] * 0.95)) ** 2, 0.3)
            crescent = np.clip((c.y - dome) / 0.006, 0, 1) * np.clip(
                (dome + thickness - c.y) / 0.006, 0, 1
            )
            img = img * (1 - crescent * span) + 0.1 * crescent * span

    if labels[j["pleural_effusion"]]:
        # Dependent fluid: opaque base with a meniscus rising laterally; blunts the angle.
        sides = (0, 1) if rng.random() < 0.4 else (int(rng.integers(2)),)
        for side in sides:
            cx = anat.lung_cx[side]
            outward = (c.x - cx) * (-1 if side == 0 else 1)
            level = (
                anat.dome_y[side]
                - float(rng.uniform(0.04, 0.1))
                - 0.5 * np.clip(outward, 0, None) ** 1.2
            )
            fluid = np.clip((c.y - level) / 0.015, 0, 1) * np.clip(
                (anat.dome_y[side] + 0.12 - c.y) / 0.02, 0, 1
            )
            region = fluid * np.clip(lungs_full[side] * 1.5, 0, 1)
            img = img * (1 - region) + 0.5 * region

    # Ribs (posterior arcs) and clavicles: bone over the thorax.
    bone = np.zeros_like(img)
    for side, sign in ((0, -1.0), (1, 1.0)):
        cx = anat.lung_cx[side]
        for k in range(9):
            y0 = anat.lung_top + 0.02 + k * 0.058
            # Posterior rib: rises from the spine, then sweeps down to the lateral wall.
            curve = y0 + 1.6 * ((c.x - 0.5) * sign - 0.1) ** 2 - 0.016
            arc = c.band(c.y - curve, 0.012) * (np.abs(c.x - cx) < anat.lung_ax[side] * 1.3)
            bone += 0.13 * arc * ((c.x - 0.5) * sign > 0.03)
        clavicle = c.band(c.y - (0.1 + 0.12 * np.abs(c.x - 0.5) - 0.0), 0.016)
        bone += (
            0.18
            * clavicle
            * (np.abs(c.x - 0.5) > 0.05)
            * (np.abs(c.x - 0.5) < 0.33)
            * ((c.x - 0.5) * sign > 0)
        )
    img += bone * body
    return img.astype(np.float32)


def render(
    seed: int, site_index: int, index: int, labels: np.ndarray, scanner: Scanner
) -> np.ndarray:
    """Stored pixel values (uint16, bits_stored deep, in the scanner's photometric sense)."""
    rng = np.random.default_rng([seed, site_index, index, 1])
    canvas = _Canvas(scanner.matrix, rng)
    att = _draw(canvas, labels)
    if scanner.blur_cells:
        small = Image.fromarray(att, mode="F").resize(
            (scanner.blur_cells, scanner.blur_cells), Image.Resampling.BOX
        )
        att = np.asarray(small.resize((scanner.matrix,) * 2, Image.Resampling.BILINEAR))
    exposure = float(rng.uniform(0.9, 1.1))
    display = np.clip(att * exposure, 0.0, 1.0) ** scanner.gamma
    display = display + rng.normal(0.0, scanner.noise, display.shape).astype(np.float32)
    display = np.clip(display, 0.0, 1.0)
    top = (1 << scanner.bits_stored) - 1
    stored = np.round(display * top).astype(np.uint16)
    if scanner.monochrome1:
        stored = (top - stored).astype(np.uint16)  # MONOCHROME1: low values display white
    return stored


# ---------------------------------------------------------------------------------------------
# DICOM


def _uid(*parts: object) -> UID:
    """A deterministic UID under 2.25 (PS3.5 B.2: a UUID as an integer), name-based like
    UUID v5 but over SHA-256, so the same (seed, site, index) always gets the same UID."""
    digest = hashlib.sha256("/".join(["pacsmesh-synth", *map(str, parts)]).encode()).digest()
    return UID(f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}")


def make_dataset(
    pixels: np.ndarray, scanner: Scanner, seed: int, site_index: int, index: int
) -> pydicom.FileDataset:
    """A DX For Presentation IOD (PS3.3 A.26) around the stored pixels; patient is fake."""
    rng = np.random.default_rng([seed, site_index, index, 2])
    sop_uid = _uid(seed, site_index, index, "instance")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACSMESH_SYNTH"
    ds = pydicom.FileDataset("", pydicom.Dataset(), file_meta=meta, preamble=b"\0" * 128)
    study_day = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    age = int(rng.integers(25, 90))
    when = f"{int(rng.integers(8, 18)):02d}{int(rng.integers(0, 60)):02d}00"

    # SOP Common (C.12.1)
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = study_day.strftime("%Y%m%d")
    ds.InstanceCreationTime = when
    # Patient (C.7.1.1): obviously synthetic identity.
    ds.PatientName = f"SYNTHETIC^SITE{site_index + 1}^{index:05d}"
    ds.PatientID = f"SYN-{seed}-S{site_index + 1}-{index:05d}"
    ds.PatientBirthDate = f"{study_day.year - age}0101"
    ds.PatientSex = "F" if rng.random() < 0.5 else "M"
    ds.PatientIdentityRemoved = "NO"  # never real: nothing to remove
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = _uid(seed, site_index, index, "study")
    ds.StudyDate = study_day.strftime("%Y%m%d")
    ds.StudyTime = when
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"S{index:05d}"
    ds.AccessionNumber = f"SYNACC{site_index + 1}{index:05d}"
    ds.StudyDescription = "XR CHEST PA (synthetic)"
    # Patient Study (C.7.2.2)
    ds.PatientAge = f"{age:03d}Y"
    # General Series (C.7.3.1) + DX Series (C.8.11.1)
    ds.Modality = "DX"
    ds.SeriesInstanceUID = _uid(seed, site_index, index, "series")
    ds.SeriesNumber = 1
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = when
    ds.SeriesDescription = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    # Frame of Reference is U for DX; General Equipment (C.7.5.1)
    ds.Manufacturer = scanner.manufacturer
    ds.ManufacturerModelName = scanner.model
    ds.InstitutionName = f"Synthetic Hospital {site_index + 1}"
    ds.DeviceSerialNumber = f"SYN{site_index + 1:04d}"
    ds.SoftwareVersions = "pacsmesh-synth 1"
    # General Image (C.7.6.1) + General Acquisition
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = when
    ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionTime = when
    ds.PatientOrientation = ["L", "F"]  # PA: image right is patient's left, down is feet
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel (C.7.6.3) with DX Image constraints (C.8.11.3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if scanner.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = scanner.bits_stored
    ds.HighBit = scanner.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if scanner.monochrome1 else 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if scanner.monochrome1 else "IDENTITY"
    ds.PixelData = pixels.astype("<u2").tobytes()
    # VOI LUT (C.11.2): a window that covers the stored range
    top = (1 << scanner.bits_stored) - 1
    ds.WindowCenter = round(top / 2 + 0.5, 1)
    ds.WindowWidth = top + 1
    ds.VOILUTFunction = "LINEAR"
    # DX Anatomy Imaged (C.8.11.2)
    ds.ImageLaterality = "U"
    anatomic = pydicom.Dataset()
    anatomic.CodeValue = "51185008"
    anatomic.CodingSchemeDesignator = "SCT"
    anatomic.CodeMeaning = "Thorax"
    ds.AnatomicRegionSequence = pydicom.Sequence([anatomic])
    # DX Detector (C.8.11.4) and DX Positioning (C.8.11.5)
    spacing = round(430.0 / scanner.matrix, 4)  # a 43 cm detector
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.ViewPosition = "PA"
    view = pydicom.Dataset()
    view.CodeValue = "399348003"
    view.CodingSchemeDesignator = "SCT"
    view.CodeMeaning = "postero-anterior"
    view.ViewModifierCodeSequence = pydicom.Sequence()
    ds.ViewCodeSequence = pydicom.Sequence([view])
    ds.PositionerType = ""
    ds.PatientPosition = ""
    ds.AcquisitionContextSequence = pydicom.Sequence()
    ds.DistanceSourceToDetector = 1800
    ds.KVP = 120
    ds.ExposureTime = 10
    return ds


def synthesize(
    out_dir: Path, sites: int, per_site: int, seed: int, image_size: int = 256
) -> list[Path]:
    """Write ``out_dir/site-1..N``, each with ``*.dcm`` and ``labels.csv``; return the site dirs."""
    if sites < 1 or per_site < 1:
        raise SynthError("sites and per_site must both be at least 1")
    if not 32 <= image_size <= 4096:
        raise SynthError(f"image_size must be between 32 and 4096, got {image_size}")
    out_dir = Path(out_dir)
    site_dirs = []
    for site_index in range(sites):
        site_dir = out_dir / f"site-{site_index + 1}"
        site_dir.mkdir(parents=True, exist_ok=True)
        scanner = site_scanner(site_index, image_size)
        prevalence = site_prevalence(site_index)
        label_rng = np.random.default_rng([seed, site_index, 0])
        all_labels = (label_rng.random((per_site, len(FINDINGS))) < prevalence).astype(np.uint8)
        rows = []
        for index in range(per_site):
            labels = all_labels[index]
            pixels = render(seed, site_index, index, labels, scanner)
            ds = make_dataset(pixels, scanner, seed, site_index, index)
            name = f"img-{index:05d}.dcm"
            ds.save_as(site_dir / name, enforce_file_format=True)
            rows.append(
                [name, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.PatientID, *map(str, labels)]
            )
        with (site_dir / LABELS_CSV).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*LABEL_COLUMNS, *FINDINGS])
            writer.writerows(rows)
        site_dirs.append(site_dir)
    return site_dirs
