"""The administrator's side of the training credential: its account and its labels file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node.services.deid import UidMapper
from node.services.training import load_uid_key
from node.settings import NodeSettings
from tests.conftest import REPO_ROOT


def run(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "node.cli", "node", *args, "--data-dir", str(data_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_a_trainer_account_takes_no_password(tmp_path: Path) -> None:
    refused = run(tmp_path, "user", "add", "t1", "--role", "trainer", "--password-stdin",
                  stdin="a long enough password\n")  # fmt: skip
    assert refused.returncode != 0
    assert "token-only" in refused.stderr
    assert run(tmp_path, "user", "add", "t1", "--role", "trainer").returncode == 0
    listed = run(tmp_path, "user", "list", "--json")
    assert '"role": "trainer"' in listed.stdout and '"password": false' in listed.stdout


def test_labels_are_rewritten_under_the_node_key_and_bad_input_is_refused(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "node"
    source = tmp_path / "labels.csv"
    source.write_text(
        "file,sop_instance_uid,patient_id,report,cardiomegaly,nodule\n"
        "a.dcm,1.2.3.4,MRN-7,no acute findings,1,\n"
        "b.dcm,1.2.3.5,MRN-8,small nodule,0,-1\n"
    )
    out = tmp_path / "deid.csv"
    done = run(data_dir, "training", "labels", str(source), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert '"dropped": ["file", "patient_id", "report"]' in done.stdout
    mapper = UidMapper(load_uid_key(NodeSettings(data_dir=data_dir).deid_uid_key_path))
    assert out.read_text().splitlines() == [
        "sop_instance_uid,cardiomegaly,nodule",
        f"{mapper('1.2.3.4')},1,",
        f"{mapper('1.2.3.5')},0,-1",
    ]

    no_key = tmp_path / "no-key.csv"
    no_key.write_text("file,cardiomegaly\na.dcm,1\n")
    refused = run(data_dir, "training", "labels", str(no_key), "--out", str(out))
    assert refused.returncode == 2 and "no sop_instance_uid column" in refused.stderr
    missing = run(data_dir, "training", "labels", str(tmp_path / "absent.csv"), "--out", str(out))
    assert missing.returncode == 2 and "cannot read absent.csv" in missing.stderr
    same = run(data_dir, "training", "labels", str(source), "--out", str(source))
    assert same.returncode == 2 and "must not overwrite" in same.stderr
