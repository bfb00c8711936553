"""`pacsmesh node training labels`: the hospital's labels, keyed by the UIDs training sees.

The federated DICOMweb source matches labels to images by SOP Instance UID, and a training
credential sees only de-identified UIDs. This command rewrites the hospital's labels CSV (keyed
by the stored UIDs) with each UID column mapped exactly as the node maps it for training (the
node's training UID key), and keeps only columns that hold nothing but label values, so file
names, Patient IDs or any other identifying column stay behind. It opens the key file only,
never the archive, so it runs beside a live node.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from node.cli_users import ConfigFile, DataDir, _fail, _load

if TYPE_CHECKING:
    from node.services.deid import UidMapper

training_app = typer.Typer(
    help="AI training: labels keyed by the de-identified UIDs a training credential sees.",
    no_args_is_help=True,
)

UID_COLUMNS: Final = ("sop_instance_uid", "series_instance_uid", "study_instance_uid")
# What a label cell may hold: positive, negative, uncertain (CheXpert -1) or unknown (blank).
LABEL_VALUES: Final = frozenset({"", "0", "1", "-1", "0.0", "1.0", "-1.0"})


def map_labels(
    rows: list[dict[str, str]], columns: list[str], mapper: UidMapper
) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """(columns kept, rows with UIDs mapped, columns dropped) of a labels table."""
    kept = [c for c in columns if c in UID_COLUMNS]
    dropped = []
    for column in columns:
        if column in UID_COLUMNS:
            continue
        if all((row.get(column) or "").strip() in LABEL_VALUES for row in rows):
            kept.append(column)
        else:
            dropped.append(column)
    out = []
    for row in rows:
        mapped = {}
        for column in kept:
            value = (row.get(column) or "").strip()
            mapped[column] = mapper(value) if column in UID_COLUMNS and value else value
        out.append(mapped)
    return kept, out, dropped


def csv_text(columns: list[str], rows: list[dict[str, str]]) -> str:
    """A labels table as CSV text."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@training_app.command("labels")
def labels(
    source: Annotated[Path, typer.Argument(help="labels CSV keyed by stored sop_instance_uid")],
    out: Annotated[Path, typer.Option("--out", help="where to write the de-identified CSV")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Write a labels CSV keyed by the de-identified UIDs the training credential sees."""
    from node.services.deid import UidMapper
    from node.services.training import load_uid_key
    from node.storage.crypto import replace_secret_file

    settings = _load(data_dir, config, None)
    try:
        with source.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        _fail(f"cannot read {source.name}: {type(exc).__name__}")
    if "sop_instance_uid" not in columns:
        _fail(f"{source.name} has no sop_instance_uid column")
    if out.resolve() == source.resolve():
        _fail("--out must not overwrite the source CSV (it is keyed by the stored UIDs)")
    try:
        key = load_uid_key(settings.deid_uid_key_path)
    except (OSError, ValueError) as exc:
        _fail(f"training UID key: {exc}")
    kept, mapped, dropped = map_labels(rows, columns, UidMapper(key))
    replace_secret_file(out, csv_text(kept, mapped).encode("utf-8"))  # mode 0600, whole or not
    typer.echo(json.dumps({"rows": len(mapped), "columns": kept, "dropped": dropped}))
