"""`pacsmesh node capture FILE... --order ACCESSION --node URL`: send captures to a node.

The command talks to a running node over HTTP(S) (`POST /gateway/captures`) rather than
opening the data directory, which the running node holds locked. All files become the frames of
one Secondary Capture instance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

_MEDIA_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}


def capture(
    files: Annotated[
        list[Path],
        typer.Argument(help="JPEG or PNG files: the frames of one capture", exists=True),
    ],
    order: Annotated[str, typer.Option("--order", help="the order's accession number")],
    node: Annotated[str, typer.Option("--node", help="the node's base URL, e.g. https://pacs")],
    conversion_type: Annotated[
        str, typer.Option(help="WSD (screen capture, default), DF (digitized film), ...")
    ] = "WSD",
    description: Annotated[str | None, typer.Option(help="series description")] = None,
    pixel_spacing: Annotated[
        float | None, typer.Option(help="scanned pixel spacing in mm (digitized film)")
    ] = None,
    cacert: Annotated[
        Path | None, typer.Option(help="CA certificate (PEM) the node's TLS cert chains to")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the node")] = 120.0,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="PACSMESH_TOKEN",
            help="bearer token allowed to store images (user or system ImagingStudy.write)",
        ),
    ] = None,
) -> None:
    """Store JPEG/PNG captures of an order on a node as a DICOM Secondary Capture."""
    import httpx

    parts = []
    for path in files:
        if not path.is_file():
            _fail(f"{path} is not a file")
        data = path.read_bytes()
        media = next((t for magic, t in _MEDIA_TYPES.items() if data.startswith(magic)), None)
        if media is None:
            _fail(f"{path} is not a JPEG or PNG file")
        parts.append(("file", (path.name, data, media)))
    form = {"accession": order, "conversion_type": conversion_type}
    if description:
        form["description"] = description
    if pixel_spacing is not None:
        form["pixel_spacing"] = repr(pixel_spacing)
    url = node.rstrip("/") + "/gateway/captures"
    try:
        response = httpx.post(
            url,
            data=form,
            files=parts,
            headers={"Authorization": f"Bearer {token}"} if token else None,
            verify=str(cacert) if cacert else True,
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the node at {node}: {type(exc).__name__}: {exc}")
    if response.status_code != 201:
        try:
            message = str(response.json().get("error", response.text))
        except ValueError:
            message = response.text[:200]
        _fail(f"the node refused the capture ({response.status_code}): {message}", code=1)
    typer.echo(json.dumps(response.json(), indent=2))


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
