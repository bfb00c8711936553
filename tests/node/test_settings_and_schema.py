"""Settings precedence, the Alembic schema matching the models, and a migration over stored
rows, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydantic import ValidationError
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select
from sqlmodel import SQLModel

from node.services.store import index_attributes
from node.settings import load_settings
from node.storage import records
from node.storage.db import alembic_config, create_index_engine, open_index
from tests.node.factories import make_ct


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


def _burned_in(url: str, sop_uid: str) -> bool | None:
    engine = create_index_engine(url)
    with engine.connect() as conn:
        value: bool | None = conn.execute(
            select(records.INSTANCE.c.burned_in_annotation).where(
                records.INSTANCE.c.sop_instance_uid == sop_uid
            )
        ).scalar_one()
    engine.dispose()
    return value


def test_instances_stored_before_0007_come_out_of_it_unrecorded(database_url: str) -> None:
    """The store records Burned In Annotation; an archive upgraded to 0007 keeps its older
    instances, with their declaration unrecorded (NULL) for the training view to read."""
    ds = make_ct()
    ds.BurnedInAnnotation = "NO"
    study, series, instance = index_attributes(ds, ExplicitVRLittleEndian)
    instance.update(size_bytes=1, content_sha256="0" * 64, blob_name="b" * 64, metadata_enc=b"x")
    engine = open_index(database_url)
    with engine.begin() as conn:
        records.insert_instance(conn, study, series, instance)
    engine.dispose()
    assert _burned_in(database_url, ds.SOPInstanceUID) is False

    cfg = alembic_config(database_url)
    command.downgrade(cfg, "0006")  # to the revision before the burned-in column
    command.upgrade(cfg, "head")
    assert _burned_in(database_url, ds.SOPInstanceUID) is None
    engine = create_index_engine(database_url)
    with engine.begin() as conn:
        (row,) = records.unrecorded_burned_in(conn, [ds.StudyInstanceUID])
        assert row.sop_instance_uid == ds.SOPInstanceUID
        # Unrecorded is not clean; once recorded from its header (NO), it is.
        assert records.list_images(conn, [ds.StudyInstanceUID], declared_clean=True) == []
        records.record_burned_in(conn, {ds.SOPInstanceUID: False})
        assert records.unrecorded_burned_in(conn, [ds.StudyInstanceUID]) == []
        assert records.list_images(conn, [ds.StudyInstanceUID], declared_clean=True) == [row]
    engine.dispose()
