"""The committed contract artifacts are exactly what the pinned solc makes of the sources."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ledger.errors import ERROR_CLASSES, error_table

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "contracts" / "artifacts"


@pytest.mark.slow
def test_recompiling_reproduces_committed_artifacts(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is required to build the contracts"
    subprocess.run(
        [node, str(REPO_ROOT / "contracts" / "build.mjs"), "--out", str(tmp_path)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=300,
    )
    built = sorted(p.name for p in tmp_path.glob("*.json"))
    committed = sorted(p.name for p in ARTIFACTS.glob("*.json"))
    assert (
        built
        == committed
        == ["AuditAnchor.json", "ConsentRegistry.json", "ConsortiumRegistry.json"]
    )
    for name in built:
        assert (tmp_path / name).read_bytes() == (ARTIFACTS / name).read_bytes(), (
            f"contracts/artifacts/{name} is stale: run `node contracts/build.mjs` and commit"
        )
    compiler = json.loads((ARTIFACTS / "ConsentRegistry.json").read_text())["compiler"]
    assert compiler["solc"].startswith("0.8.28+") and compiler["evmVersion"] == "paris"


def test_every_custom_error_maps_to_a_typed_python_error() -> None:
    names = {name for name, _args, _types in error_table().values()}
    assert names == set(ERROR_CLASSES)
