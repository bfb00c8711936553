"""The DICOMweb source against a pacsmesh node that enforces tokens: the training credential.

An operator makes the credential as docs/security-auth.md says (a token-only account, a token
narrowed to `system/ImagingStudy.read`); the source sends it and reads the site's chest
radiographs; without it, or with a credential for something else, it gets a clear refusal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from federated.sources import SourceError, SourceOptions, open_source
from federated.synth import synthesize
from tests.conftest import REPO_ROOT
from tests.node.conftest import RunningNode, start_node

ISSUER = "https://pacs.hospital-a.test"
ENV = {"NODE_AUTH_ENABLED": "true", "NODE_TOKEN_ISSUER": ISSUER}


def user_cli(node: RunningNode, *args: str) -> str:
    """`pacsmesh node user ...` beside the running node, as an operator runs it."""
    cmd = [sys.executable, "-m", "node.cli", "node", "user", *args]
    cmd += ["--data-dir", str(node.data_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **ENV}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def site_on_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, Path]]:
    """A node with auth on holding one synthetic site, stored by an admin."""
    base = tmp_path_factory.mktemp("fed-node")
    site = synthesize(base / "synth", sites=2, per_site=6, seed=5, image_size=64)[0]
    node = start_node(base / "node", env=ENV)
    try:
        user_cli(node, "add", "root", "--role", "admin")
        admin = user_cli(node, "token", "root", "--ttl", "10m")
        client = DICOMwebClient(node.dicomweb, headers={"Authorization": f"Bearer {admin}"})
        client.store_instances([pydicom.dcmread(p) for p in sorted(site.glob("*.dcm"))])
        user_cli(node, "add", "trainer", "--role", "admin")
        yield node, site
    finally:
        node.stop()


def test_the_training_credential_reads_the_sites_radiographs(
    site_on_node: tuple[RunningNode, Path],
) -> None:
    node, site = site_on_node
    token = user_cli(node, "token", "trainer", "--ttl", "1h", "--scope", "system/ImagingStudy.read")
    records = open_source(
        f"dicomweb:{node.dicomweb}", SourceOptions(labels=site / "labels.csv", token=token)
    )
    reference = {r.key: r for r in open_source(str(site))}
    assert sorted(r.key for r in records) == sorted(reference)
    for record in records[:2]:
        np.testing.assert_allclose(record.load(), reference[record.key].load(), atol=1e-3)


def test_without_the_right_credential_the_source_is_refused_clearly(
    site_on_node: tuple[RunningNode, Path],
) -> None:
    node, site = site_on_node
    url = f"dicomweb:{node.dicomweb}"
    labels = site / "labels.csv"
    with pytest.raises(SourceError, match=r"HTTP 401 \(check the training token\)"):
        open_source(url, SourceOptions(labels=labels))
    # A credential for storing captures cannot read the archive.
    device = user_cli(
        node, "token", "trainer", "--ttl", "10m", "--scope", "system/ImagingStudy.write"
    )
    with pytest.raises(SourceError, match="HTTP 403") as refused:
        open_source(url, SourceOptions(labels=labels, token=device))
    assert device not in str(refused.value)
