"""The standard DICOMweb comparison, with one patient per study.

``../shared/tools/dicomweb-bench.py`` gives each instance of a small-set study a different
PatientID. pacsmesh refuses an instance whose patient differs from the one its study is filed
under (FailureReason A902; docs/dicom-conformance.md, "One patient per study"), as
dcm4chee-arc does by default, while Orthanc files every patient/study pair as a study of its
own: the tool's small-set STOW, WADO and PatientID QIDO figures then compare different work.

This runs the same tool — its data, its curl-driven STOW/WADO, its QIDO, its ratios — with one
change: every instance of a study carries that study's patient (patient k of the tool's fifty
for the k-th study, named as the tool names them). Nothing else differs, so the figures are
like-for-like again.

Usage (servers started and stopped by the wrapper):
    TOOL=one-patient benchmarks/run_dicomweb.sh [--small 1000 --large 40]
or against running servers:
    python benchmarks/dicomweb_one_patient.py ROOT_A ROOT_B [dicomweb-bench.py options]
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pydicom

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[2] / "shared"))


def load_tool(path: Path = SHARED / "tools" / "dicomweb-bench.py") -> ModuleType:
    spec = importlib.util.spec_from_file_location("dicomweb_bench", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the shared benchmark tool at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_patient_per_study(
    small_set: Callable[[int, str], list[bytes]],
) -> Callable[[int, str], list[bytes]]:
    """The tool's small set, every instance of the k-th study given patient k (mod 50), named
    as the tool names its patients, so its PatientID and name queries find studies."""

    def build(n: int, tag: str) -> list[bytes]:
        studies: dict[str, int] = {}
        out: list[bytes] = []
        for blob in small_set(n, tag):
            ds = pydicom.dcmread(io.BytesIO(blob))
            k = studies.setdefault(ds.StudyInstanceUID, len(studies)) % 50
            ds.PatientID, ds.PatientName = f"BENCH-{tag}-{k}", f"BENCH^{tag}{k}"
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out.append(buffer.getvalue())
        return out

    return build


def main() -> None:
    tool: Any = load_tool()  # a script, not a typed module
    tool.small_set = one_patient_per_study(tool.small_set)
    tool.main()


if __name__ == "__main__":
    main()
