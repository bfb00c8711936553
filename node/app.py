"""Builds the node's HTTP application: `create_app(settings)`."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger.anchor import AuditAnchorClient
from node.api.admin import build_router as build_admin_router
from node.api.audit_http import AuditMiddleware
from node.api.auth import build_router as build_auth_router
from node.api.dicomweb.router import build_router as build_dicomweb_router
from node.api.fhir.router import build_router as build_fhir_router
from node.api.gateway import router as gateway_router
from node.api.network import peer_router as network_peer_router
from node.api.network import user_router as network_user_router
from node.dimse.server import start_dimse
from node.errors import NodeError
from node.hl7.runtime import start_hl7
from node.ledger_link import close_ledger_link, open_ledger_link
from node.services.archive import Archive
from node.services.audit import NodeAudit, audit_https_refusal, start_anchoring
from node.settings import NodeSettings
from node.tls.handshake_audit import REFUSALS

log = logging.getLogger("pacsmesh.node")


def create_app(settings: NodeSettings, archive: Archive | None = None) -> FastAPI:
    """The node's FastAPI app; opens the archive at start-up unless one is handed in."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = archive is None
        app.state.archive = archive or Archive.open(settings)
        # Everything allocated so far lives for the whole process: keep the cyclic collector
        # from rescanning it on every full pass (it was the p95 of wide QIDO results).
        app.state.audit = NodeAudit.open(
            settings.data_dir, settings.ae_title, settings.audit_sync.upper()
        )
        gc.collect()
        gc.freeze()
        # Refused HTTPS handshakes (node serve's context) go to this node's trail, recorded in
        # the background: they reach no request, so nobody waits on them.
        audit = app.state.audit
        REFUSALS.sink = lambda reason: audit_https_refusal(audit, reason)
        hl7 = start_hl7(settings, app.state.archive.engine, app.state.audit)
        dimse = None
        anchoring = None
        try:
            open_ledger_link(app, settings)  # app.state.ledger (+ ledger_chain, ledger_deployment)
            open_network(app, settings)  # app.state.peer_directory, app.state.peer_client
            if app.state.ledger is not None:
                # The audit log's roots go on chain in the background; an outage only delays
                # them (the events are durable in the log already).
                anchoring = start_anchoring(
                    app.state.audit.log,
                    AuditAnchorClient(app.state.ledger.chain, app.state.ledger.deployment),
                    settings.audit_anchor_every_events,
                    settings.audit_anchor_every_seconds,
                )
            if settings.dimse_port or settings.dimse_tls_port:
                # Started after the archive is open and stopped before it closes: the DIMSE
                # handlers use it from their own threads.
                dimse = start_dimse(settings, app.state.archive, app.state.audit)
            yield
        finally:
            if dimse is not None:
                dimse.stop()
            if anchoring is not None:
                anchoring.stop()  # anchors what is pending, while the chain is still open
            close_ledger_link(app)
            hl7.stop()
            REFUSALS.sink = None
            tokens = getattr(app.state, "node_tokens", None)
            if tokens is not None:
                tokens.close()  # its account lookups' connection, before the index closes
            # Last: every event of a request or message still in flight is committed first.
            app.state.audit.close()
            if owned:
                app.state.archive.close()

    app = FastAPI(
        title="pacsmesh node",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    if archive is not None:
        app.state.archive = archive
    app.include_router(build_dicomweb_router(), prefix="/dicom-web")
    app.include_router(gateway_router)
    app.include_router(build_fhir_router(), prefix="/fhir")
    app.include_router(build_admin_router(), prefix="/admin")
    app.include_router(network_peer_router, prefix="/network/peer")
    app.include_router(network_user_router, prefix="/network")
    app.include_router(build_auth_router())
    if settings.auth_enabled:
        _install_auth(app, settings)
    else:
        # Development escape hatch (refused in production by the settings): say so loudly.
        log.warning(
            "AUTHENTICATION IS OFF (auth_enabled=false): every route is open to anyone who "
            "reaches %s; never run a node like this with real data",
            settings.base_url,
        )
    # Outermost (added last): requests that authentication refuses are audited too.
    app.add_middleware(AuditMiddleware, audit=lambda: getattr(app.state, "audit", None))
    _install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def open_network(app: FastAPI, settings: NodeSettings) -> None:
    """Peers need the ledger (who is a member now) and the consortium CA; asking them also
    needs this node's own certificate. Without them the network routes answer 403/503."""
    app.state.peer_directory = None
    app.state.peer_client = None
    link = app.state.ledger
    if link is None or settings.tls_ca_cert is None:
        return
    from ledger.pki import load_ca_cert
    from node.services.exchange_requester import PeerClient
    from node.tls.peers import PeerDirectory, RegistryMembers

    app.state.peer_directory = PeerDirectory(
        RegistryMembers(link.consortium),
        load_ca_cert(settings.tls_ca_cert),
        min_interval=settings.network_peer_refresh_seconds,
    )
    if settings.tls_cert is not None and settings.tls_key is not None:
        app.state.peer_client = PeerClient(
            settings.tls_cert,
            settings.tls_key,
            settings.tls_ca_cert,
            search_timeout=settings.network_peer_timeout_seconds,
            transfer_timeout=settings.network_transfer_timeout_seconds,
        )


def _install_auth(app: FastAPI, settings: NodeSettings) -> None:
    """Default deny: every route but the public allow-list needs a token and a scope."""
    from node.auth.middleware import BearerAuthMiddleware
    from node.auth.tokens import tokens_for

    app.add_middleware(BearerAuthMiddleware, tokens=lambda: tokens_for(settings, app.state))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NodeError)
    async def node_error(_request: Request, exc: NodeError) -> JSONResponse:
        # Authentication errors carry their WWW-Authenticate challenge (RFC 6750 §3).
        headers = getattr(exc, "headers", None)
        return JSONResponse({"error": exc.message}, status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Never echo the exception: it may carry personal data from a header.
        log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal error"}, status_code=500)
