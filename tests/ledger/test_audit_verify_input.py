"""`pacsmesh audit verify --node …` refuses bad input with exit 2, saying what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ledger.audit_cli import audit_app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node", "ftp://a.example"], "not an http(s) URL"),
        (["--node", "https://a.example", "--token-file", "/nonexistent/t"], "neither URL=FILE"),
        (["--node", "https://a.example", "--token-file", "https://a.example=/nonexistent"],
         "cannot read token file"),
        (["--node", "https://a.example", "--member", "https://a.example=0x12"], "--member"),
        (["--node", "https://a.example", "--ca-cert", "/nonexistent.pem"], "cannot load --ca-cert"),
        (["--node", "https://a.example", "--offline"], "check a local log"),
        (["--strict"], "go with --node"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_saying_what_is_wrong(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = runner.invoke(audit_app, ["verify", *args, "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 2, result.output
    assert message in json.loads(result.stdout)["error"]


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.token").write_text("\n")
    args = ["--node", "https://a.example", "--token-file", str(tmp_path / "empty.token")]
    result = runner.invoke(audit_app, ["verify", *args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "is empty" in result.stderr


def test_without_a_deployment_file_the_auditor_is_told_where_it_looked(tmp_path: Path) -> None:
    result = runner.invoke(
        audit_app,
        ["verify", "--node", "https://a.example", "--data-dir", str(tmp_path), "--rpc",
         "http://127.0.0.1:9", "--json"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "deployment.json" in json.loads(result.stdout)["error"]
