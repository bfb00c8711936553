"""Micro-benchmark of the WADO-RS image services (pure functions, no HTTP, no storage).

Run from the repository root:  PYTHONPATH=$PWD python benchmarks/bench_imaging.py [--repeat N]

Times one call of each service on the shared real files and two generated instances that
match the issue's benchmark sets: a ~33 KB CT slice (128x128x16-bit, Implicit VR) and an
~8 MB DX (2048x2048x16-bit, Explicit VR). Each figure is the median of N runs, in ms, with
the dataset parsed once beforehand (parsing is the router's cost, measured separately).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from node.services.dicom_json import bulkdata_paths, rebase_bulkdata, to_dicom_json
from node.services.frames import frames
from node.services.render import render, thumbnail
from node.services.syntaxes import Representation
from node.services.transcode import transcode

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BASE = "http://127.0.0.1:8080/dicom-web/studies/1/series/2/instances/3/bulkdata/"
DECODED = Representation("application/octet-stream", EXPLICIT, True)


def generated(rows: int, columns: int, syntax: str, modality: str) -> bytes:
    """A generated 16-bit greyscale instance as Part-10 bytes."""
    rng = np.random.default_rng(0)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.SOPClassUID = (
        "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.1.1"
    )
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = modality, "Bench^Mark", "BENCH1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True, implicit_vr=syntax == IMPLICIT)
    return buffer.getvalue()


def parse(data: bytes) -> Dataset:
    """What the router does per request after decrypting: parse the Part-10 bytes."""
    return pydicom.dcmread(io.BytesIO(data))


def metadata(data: bytes) -> dict[str, object]:
    """Parse and convert to DICOM JSON: the per-instance cost of a metadata request."""
    return to_dicom_json(parse(data), bulkdata_uri=str)


def median_ms(action: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds (CPU time is steadier on a shared machine)."""
    action()  # warm caches and imports
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        action()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    samples = {
        "CT 128x128 implicit (generated)": generated(128, 128, ImplicitVRLittleEndian, "CT"),
        "DX 2048x2048 explicit (generated)": generated(2048, 2048, ExplicitVRLittleEndian, "DX"),
    }
    # A real header: ~100 attributes, many of them private (GE), as scanners write them.
    ct_small = Path(str(get_testdata_file("CT_small.dcm")))
    samples["CT_small.dcm (pydicom, real header)"] = ct_small.read_bytes()
    for path in sorted(SHARED.glob("*.dcm")):
        samples[path.name] = path.read_bytes()
    print(f"| {'sample':36} | {'KB':>6} | {'operation':28} | {'wall ms':>8} | {'CPU ms':>8} |")
    print(f"| {'-' * 36} | {'-' * 6} | {'-' * 28} | {'-' * 8} | {'-' * 8} |")
    for name, data in samples.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = str(ds.file_meta.TransferSyntaxUID)
        target = IMPLICIT if syntax == EXPLICIT else EXPLICIT
        ops: dict[str, Callable[[], object]] = {
            "dcmread (router)": partial(parse, data),
            f"transcode -> {'implicit' if target == IMPLICIT else 'explicit'}": partial(
                transcode, ds, target
            ),
            "frames [1] octet-stream": partial(frames, ds, [1], DECODED),
            "render jpeg full size": partial(render, ds),
            "render png viewport 512": partial(
                render, ds, media_type="image/png", viewport=(512, 512)
            ),
            "thumbnail": partial(thumbnail, ds),
            "parse + metadata (JSON)": partial(metadata, data),
            "rebase cached metadata": partial(
                rebase_bulkdata, to_dicom_json(ds, bulkdata_uri=bulkdata_paths), BASE
            ),
        }
        for op, action in ops.items():
            wall, cpu = median_ms(action, repeat)
            print(f"| {name:36} | {len(data) // 1024:>6} | {op:28} | {wall:>8.2f} | {cpu:>8.2f} |")


if __name__ == "__main__":
    main()
