"""Settings precedence and the Alembic schema matching the models, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from sqlmodel import SQLModel

from node.settings import load_settings
from node.storage.db import open_index


def test_flags_beat_environment_beat_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path}"\nport = 7000\nhost = "127.0.0.2"\n')
    monkeypatch.setenv("NODE_PORT", "9000")
    s = load_settings(config_file=config)
    assert (s.port, s.host, s.data_dir) == (9000, "127.0.0.2", tmp_path)
    assert load_settings(config_file=config, port=1234).port == 1234
    assert s.index_url == f"sqlite:///{tmp_path / 'index.sqlite'}"


def test_bad_settings_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="tls_cert and tls_key"):
        load_settings(data_dir=tmp_path, tls_cert=tmp_path / "c.pem")
    with pytest.raises(ValidationError, match="production nodes must name their KEK source"):
        load_settings(data_dir=tmp_path, environment="production")
    bad = tmp_path / "bad.toml"
    bad.write_text("port = [")
    with pytest.raises(ValueError, match="cannot read config file"):
        load_settings(config_file=bad)


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = open_index(database_url)
    node_tables = {"study", "series", "instance", "study_key", "node_meta", "alembic_version"}

    def ours(obj: object, name: str | None, type_: str, *_: object) -> bool:
        # Other packages (the ledger's audit log) register tables on the same metadata.
        if name == "ix_study_patient_name_search_pattern":
            return False  # PostgreSQL-only operator-class index, created by migration 0002
        table = getattr(obj, "table", obj)
        return (type_ != "table" and getattr(table, "name", None) in node_tables) or (
            type_ == "table" and name in node_tables
        )

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": ours})
        diff = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"
