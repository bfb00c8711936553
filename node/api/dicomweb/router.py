"""Assembles the DICOMweb routers (PS3.18 §10) under one prefix."""

from __future__ import annotations

from fastapi import APIRouter

from node.api.dicomweb import delete, qido, stow, wado


def build_router() -> APIRouter:
    """All DICOMweb resources."""
    router = APIRouter()
    router.include_router(stow.router)
    router.include_router(qido.router)
    router.include_router(wado.router)
    router.include_router(delete.router)
    return router
