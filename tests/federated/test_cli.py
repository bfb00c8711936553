"""``pacsmesh federated ...`` as a user types it (Typer's runner on the mounted app)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federated.cli import federated_app

runner = CliRunner()


def test_synth_then_simulate_prints_rounds_and_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = runner.invoke(
        federated_app,
        ["synth", "--out", str(data), "--sites", "3", "--per-site", "12", "--seed", "3",
         "--image-size", "48"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert made.output.count("12 images") == 3

    text = runner.invoke(
        federated_app,
        ["simulate", "--data", str(data), "--rounds", "2", "--image-size", "32",
         "--strategy", "fedprox"],
    )  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "round 1: macro AUROC" in text.output and "round 2: macro AUROC" in text.output
    assert text.output.count("site-2: AUROC") == 2
    assert "final: macro AUROC" in text.output

    as_json = runner.invoke(
        federated_app,
        ["simulate", "--data", str(data), "--rounds", "1", "--image-size", "32", "--json"],
    )  # fmt: skip
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    assert document["sites"] == ["site-1", "site-2", "site-3"]
    assert document["final"]["participants"] == ["site-1", "site-2", "site-3"]
    assert len(document["final"]["model_sha256"]) == 64
    assert document["final"]["evaluation"]["carried_by"] == "final-evaluate-message"

    separate = runner.invoke(
        federated_app,
        ["simulate", "--data", str(data), "--rounds", "1", "--image-size", "32", "--json",
         "--separate-evaluate"],
    )  # fmt: skip
    assert separate.exit_code == 0, separate.output
    final = json.loads(separate.stdout)["final"]
    # The same training, its model evaluated by a separate evaluate message after aggregation.
    assert final["evaluation"]["carried_by"] == "evaluate-message"
    assert final["evaluation"]["sites"] == ["site-1", "site-2", "site-3"]
    assert final["global_metrics"]["loss"] == pytest.approx(
        document["final"]["global_metrics"]["loss"], rel=1e-4
    )


def test_bad_input_gives_a_message_and_an_exit_code_not_a_traceback(tmp_path: Path) -> None:
    missing = runner.invoke(federated_app, ["simulate", "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 5
    assert "does not exist" in missing.output
    assert "Traceback" not in missing.output

    (tmp_path / "site-1").mkdir()
    bad = runner.invoke(
        federated_app, ["simulate", "--data", str(tmp_path), "--strategy", "fedsgd"]
    )
    assert bad.exit_code == 2
    assert "unknown strategy 'fedsgd'" in bad.output


def test_evaluate_writes_results_json_and_plot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert runner.invoke(
        federated_app,
        ["synth", "--out", str(data), "--sites", "3", "--per-site", "16", "--image-size", "48"],
    ).exit_code == 0  # fmt: skip
    out = tmp_path / "out"
    done = runner.invoke(
        federated_app,
        ["evaluate", "--data", str(data), "--out", str(out), "--seeds", "1", "--rounds", "2",
         "--methods", "centralized,fedavg,fedbn,local", "--image-size", "32"],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"centralized", "fedavg", "fedbn", "local"}
    for summary in results["methods"].values():
        assert len(summary["macro_auroc_per_round"]) == 2
        assert 0.0 <= summary["macro_auroc"] <= 1.0
    assert "fedavg" in results["federated_to_centralized_ratio"]
    assert (out / "auroc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fedavg/centralized macro AUROC ratio" in done.output


def test_supernode_refuses_missing_key_files_before_starting_flower(tmp_path: Path) -> None:
    done = runner.invoke(
        federated_app,
        ["supernode", "--superlink", "127.0.0.1:9", "--ca-cert", str(tmp_path / "ca.pem"),
         "--private-key", str(tmp_path / "site.key"), "--site-id", "hosp-a",
         "--data-source", "dicomweb:https://pacs.example/dicom-web",
         "--state-dir", str(tmp_path / "state")],
    )  # fmt: skip
    assert done.exit_code == 6
    assert "ca.pem is not a file" in done.output


def test_dicomweb_site_settings_travel_through_the_node_config(tmp_path: Path) -> None:
    import shlex
    import tomllib

    from federated.deployment import supernode_argv
    from federated.run_config import NodeSettings

    token = tmp_path / "token"
    token.write_text("s3cret-training-token\n")
    labels = tmp_path / "labels.csv"
    argv = supernode_argv(
        "127.0.0.1:9092", tmp_path / "ca.pem", tmp_path / "k", "hosp-a",
        "dicomweb:https://pacs.hosp-a/dicom-web", tmp_path / "state",
        labels=labels, token_file=token, torch_threads=2,
    )  # fmt: skip
    raw = argv[argv.index("--node-config") + 1]
    # Flower parses each key=value as TOML; do the same.
    config = {
        k: tomllib.loads(f"v = {v}")["v"]
        for k, v in (item.split("=", 1) for item in shlex.split(raw, posix=False))
    }
    node = NodeSettings.from_node_config(config, node_id=1)
    assert node.data_source == "dicomweb:https://pacs.hosp-a/dicom-web"
    assert node.site_id == "hosp-a" and node.torch_threads == 2
    assert node.labels == labels and node.cache_dir == tmp_path / "state" / "cache"
    assert node.token() == "s3cret-training-token"
    # The secret itself is never on the command line, only the path to it.
    assert "s3cret" not in " ".join(argv)
