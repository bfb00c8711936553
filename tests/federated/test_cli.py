"""``pacsmesh federated ...`` as a user types it (Typer's runner on the mounted app)."""

from __future__ import annotations

import json
from pathlib import Path

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
