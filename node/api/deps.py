"""Dependencies shared by routers, as Annotated aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from node.services.archive import Archive


def get_archive(request: Request) -> Archive:
    """The archive opened at start-up."""
    archive: Archive = request.app.state.archive
    return archive


ArchiveDep = Annotated[Archive, Depends(get_archive)]
