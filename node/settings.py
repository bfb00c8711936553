"""Node settings: one pydantic-settings object per process, built at start-up and passed in.

Precedence, highest first: command-line flags (passed as init values), `NODE_*` environment
variables (nested with `__`), the optional TOML config file, then these defaults.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from node.auth.oidc_config import OidcIssuer

GIB = 1 << 30


class RemoteAE(BaseModel):
    """A DICOM application entity this node talks to: where it listens and what it is.

    `role` decides what it may do: a `modality` stores acquisitions (with an accession number)
    and queries the worklist; a `workstation` queries and retrieves; an `archive` may store
    without an order (migrations, peers). C-MOVE destinations must be known AEs.
    """

    host: str
    port: int = Field(ge=1, le=65535)
    role: Literal["modality", "workstation", "archive"] = "workstation"
    # DICOM TLS (PS3.15 B.12): an AE that speaks TLS is reached over TLS (C-MOVE destination)
    # and may associate only on the node's TLS port, so its title is never usable in the clear.
    tls: bool = Field(default=False, description="this AE speaks DICOM TLS (both directions)")
    tls_ca_cert: Path | None = Field(
        default=None, description="CA that issued this AE's certificate; default dimse_tls_ca_cert"
    )
    tls_server_name: str | None = Field(
        default=None, description="name its certificate must carry; default: host"
    )


def _check_ae_title(value: str) -> str:
    # PS3.5 §6.2: AE is at most 16 characters of the default repertoire, no backslash or controls.
    stripped = value.strip()
    if not stripped or len(stripped) > 16 or "\\" in stripped or not stripped.isprintable():
        raise ValueError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return stripped


class _TomlFileSource(PydanticBaseSettingsSource):
    """Values from the TOML file named by the `config_file` init value (if any)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        if path is not None:
            try:
                self._values = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"cannot read config file {path}: {exc}") from exc
            self._values = self._values.get("node", self._values)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k in self.settings_cls.model_fields}


class NodeSettings(BaseSettings):
    """Everything a node needs to start: where its data lives, how it listens, its limits."""

    model_config = SettingsConfigDict(env_prefix="NODE_", env_nested_delimiter="__", extra="ignore")

    config_file: Path | None = Field(default=None, description="optional TOML config file")
    data_dir: Path = Field(description="the node's data directory (index, blobs, keys)")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the data directory"
    )
    kek_source: str = Field(
        default="file",
        description="'file' (DATA_DIR/keys/kek.key), 'file:PATH', or 'env:VARIABLE' (base64)",
    )
    environment: Literal["development", "production"] = "development"
    public_url: str | None = Field(
        default=None, description="base URL clients reach this node at (for RetrieveURL)"
    )
    max_request_bytes: int = Field(default=8 * GIB, gt=0)
    max_instances_per_request: int = Field(default=10_000, gt=0)
    max_header_bytes: int = Field(
        default=64 << 20, gt=0, description="largest DICOM header (all before Pixel Data)"
    )
    fsync: bool = Field(default=True, description="fsync blobs and directories before acking")
    # DIMSE (PS3.7) service: 0 turns the listener off.
    dimse_port: int = Field(default=11112, ge=0, le=65535)
    ae_title: str = Field(default="PACSMESH", description="this node's DICOM AE title")
    remote_aes: dict[str, RemoteAE] = Field(
        default_factory=dict, description="known AE titles: only these may associate"
    )
    # --- DICOM TLS (issue #6, dimsetls helper; docs/dicom-conformance.md "Security") ---
    # A second DIMSE listener speaking TLS (PS3.15 B.12, BCP 195): 0 turns it off; 2762 is the
    # registered dicom-tls port. The AE allow-list applies on it as on the plain port.
    dimse_tls_port: int = Field(default=0, ge=0, le=65535, description="DICOM TLS port; 0 = off")
    dimse_tls_cert: Path | None = Field(
        default=None, description="certificate for DICOM TLS (PEM); default tls_cert"
    )
    dimse_tls_key: Path | None = Field(
        default=None, description="its private key (PEM); default tls_key"
    )
    dimse_tls_ca_cert: Path | None = Field(
        default=None,
        description="CA(s) of the hospital PKI: modality and workstation certificates must chain "
        "to one (may differ from the consortium CA)",
    )
    dimse_tls_client_cert: Literal["required", "optional"] = Field(
        default="required",
        description="'required' (default): no association without a CA-issued certificate",
    )

    @property
    def dimse_tls_identity(self) -> tuple[Path, Path] | None:
        """The certificate and key the node presents in DICOM TLS, both ways."""
        if self.dimse_tls_cert is not None and self.dimse_tls_key is not None:
            return self.dimse_tls_cert, self.dimse_tls_key
        if self.tls_cert is not None and self.tls_key is not None:
            return self.tls_cert, self.tls_key
        return None

    # --- end of the DICOM TLS block ---
    # HL7 v2 over MLLP: 0 turns the listener off.
    hl7_port: int = Field(default=2575, ge=0, le=65535)
    hl7_application: str = Field(default="PACSMESH", description="MSH-3/MSH-5 name of this node")
    hl7_facility: str = Field(default="PACSMESH", description="MSH-4/MSH-6 facility")
    ocs_host: str | None = Field(default=None, description="order system MLLP host (outbound)")
    ocs_port: int | None = Field(default=None, ge=1, le=65535)
    ocs_application: str = Field(default="OCS", description="MSH-5 of messages to the OCS")
    ocs_facility: str = Field(default="HOSPITAL", description="MSH-6 of messages to the OCS")
    # -- issue #6 (pki-deid): consortium mutual TLS, see node/tls and docs/security-pki.md --
    tls_ca_cert: Path | None = Field(
        default=None, description="consortium CA certificate: peers must present one it issued"
    )
    tls_client_cert: Literal["optional", "required"] = Field(
        default="optional",
        description="'required' for a peer-only port; 'optional' where users without a "
        "certificate also connect (peer routes still demand one)",
    )
    # --- Users, tokens and OIDC issuers (issue #6, auth helper) ---
    # Default deny on every route. Turning it off is a development escape hatch only: refused
    # in production, and a node started without it logs a warning (docs/security-auth.md).
    auth_enabled: bool = Field(
        default=True, description="require bearer tokens (default deny); off: development only"
    )
    token_issuer: str | None = Field(
        default=None, description="`iss` of tokens this node signs; default: the base URL"
    )
    token_audience: str | None = Field(
        default=None, description="`aud` tokens for this node carry; default: the issuer"
    )
    token_signing_key: Path | None = Field(
        default=None, description="PEM private key; default DATA_DIR/keys/token-signing.pem"
    )
    token_ttl_seconds: int = Field(default=900, gt=0, le=86_400, description="login tokens")
    token_max_ttl_seconds: int = Field(
        default=86_400, gt=0, description="longest token `node user token` may print"
    )
    token_leeway_seconds: int = Field(
        default=30, ge=0, le=300, description="clock skew allowed on exp, nbf and iat"
    )
    login_max_failures: int = Field(
        default=5, gt=0, description="failed logins per user or per address before a pause"
    )
    login_window_seconds: int = Field(default=300, gt=0)
    oidc_issuers: list[OidcIssuer] = Field(
        default_factory=list, description="external OpenID Connect issuers trusted for users"
    )

    @property
    def token_issuer_id(self) -> str:
        """The `iss` this node puts in the tokens it signs."""
        return (self.token_issuer or self.base_url).rstrip("/")

    @property
    def token_audience_id(self) -> str:
        """The `aud` tokens for this node must carry."""
        return self.token_audience or self.token_issuer_id

    # --- end of the auth block ---

    @field_validator("ae_title")
    @classmethod
    def _check_own_title(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("remote_aes")
    @classmethod
    def _check_remote_titles(cls, value: dict[str, RemoteAE]) -> dict[str, RemoteAE]:
        return {_check_ae_title(title): ae for title, ae in value.items()}

    @model_validator(mode="after")
    def _check(self) -> NodeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_ca_cert is not None and self.tls_cert is None:
            # Mutual TLS is still TLS: the node must present its own certificate first.
            raise ValueError("tls_ca_cert (mutual TLS) needs the node's tls_cert and tls_key")
        if self.tls_client_cert == "required" and self.tls_ca_cert is None:
            raise ValueError("tls_client_cert=required needs tls_ca_cert, the consortium CA")
        if (self.ocs_host is None) != (self.ocs_port is None):
            raise ValueError("ocs_host and ocs_port must be given together")
        self._check_dimse_tls()
        if self.environment == "production" and self.kek_source == "file":
            # The default key file sits beside the data it protects: fine for development,
            # refused in production, where the KEK must come from elsewhere.
            raise ValueError("production nodes must name their KEK source (file:PATH or env:VAR)")
        if self.environment == "production" and not self.auth_enabled:
            # Without tokens every route is open to whoever reaches the port.
            raise ValueError(
                "production nodes must enforce bearer tokens: remove auth_enabled=false "
                "(NODE_AUTH_ENABLED) or run with environment=development"
            )
        return self

    def _check_dimse_tls(self) -> None:
        if (self.dimse_tls_cert is None) != (self.dimse_tls_key is None):
            raise ValueError("dimse_tls_cert and dimse_tls_key must be given together")
        if self.dimse_tls_port:
            if self.dimse_tls_port in (self.dimse_port, self.port):
                raise ValueError(
                    "dimse_tls_port must differ from dimse_port and port (PS3.15 B.1: "
                    "TLS has its own port)"
                )
            if self.dimse_tls_identity is None:
                raise ValueError(
                    "dimse_tls_port needs a certificate and key: dimse_tls_cert/dimse_tls_key "
                    "or tls_cert/tls_key"
                )
            if self.dimse_tls_ca_cert is None:
                raise ValueError(
                    "dimse_tls_port needs dimse_tls_ca_cert: the CA that issues the "
                    "certificates of modalities and workstations"
                )
        for name, ae in self.remote_aes.items():
            if not ae.tls:
                continue
            title = name.upper()  # as the node matches it (environment names arrive lower-case)
            if self.dimse_tls_identity is None:
                raise ValueError(
                    f"remote AE {title} has tls = true: the node needs a certificate and key "
                    "(dimse_tls_cert/dimse_tls_key or tls_cert/tls_key)"
                )
            if ae.tls_ca_cert is None and self.dimse_tls_ca_cert is None:
                raise ValueError(
                    f"remote AE {title} has tls = true: give its tls_ca_cert or dimse_tls_ca_cert"
                )

    @property
    def index_url(self) -> str:
        """The index database URL, defaulting to SQLite inside the data directory."""
        from node.storage.db import default_database_url

        return self.database_url or default_database_url(self.data_dir)

    @property
    def base_url(self) -> str:
        """How this node names itself in URLs it hands out."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = None
        if isinstance(init_settings, InitSettingsSource):
            config_file = init_settings.init_kwargs.get("config_file")
        toml = _TomlFileSource(settings_cls, Path(config_file) if config_file else None)
        return (init_settings, env_settings, toml)

    # --- Ledger link and patient consent (issue #6, consent-node helper; docs/consent.md) ---
    # The node opens the chain only when a deployment file exists in ledger_data_dir; without
    # one it runs, and cross-hospital consent answers 503. The embedded chain (ledger_rpc
    # unset) is owned by ONE process: a node serving it locks it, so `pacsmesh consent ...`
    # and a second node must then use a real chain (anvil, Besu) through an RPC URL.
    ledger_data_dir: Path | None = Field(
        default=None,
        description="deployment.json, node key, embedded chain; default DATA_DIR/ledger",
    )
    ledger_rpc: str | None = Field(
        default=None, description="JSON-RPC URL of the chain; unset: the embedded chain"
    )
    ledger_key_file: Path | None = Field(
        default=None, description="the node member key; default LEDGER_DATA_DIR/keys/node.json"
    )
    ledger_key_passphrase: str | None = Field(
        default=None,
        description="'env:VAR' or 'file:PATH' holding the member key's passphrase; unset: "
        "PACSMESH_NODE_KEY_PASSWORD, else (development only) keys/node.password",
    )
    ledger_confirmations: int = Field(default=0, ge=0, description="blocks behind the head")
    ledger_consent_refresh_seconds: float = Field(
        default=2.0, gt=0, description="how often the consent cache syncs from contract events"
    )
    ledger_consent_max_age_seconds: float = Field(
        default=30.0, gt=0, description="consent decisions are refused (503) past this staleness"
    )
    audit_sync: Literal["normal", "full"] = Field(
        default="normal",
        description="audit log commits: 'normal' survives a node crash, 'full' also power loss",
    )
    audit_anchor_every_events: int = Field(
        default=1000, gt=0, description="anchor the audit log's root after this many events"
    )
    audit_anchor_every_seconds: float = Field(
        default=60.0, gt=0, description="... or after this long, whichever comes first"
    )

    @property
    def ledger_dir(self) -> Path:
        """Where the ledger side of this node lives (deployment file, member key, chain)."""
        return self.ledger_data_dir or self.data_dir / "ledger"

    # --- end of the ledger block ---

    # --- Cross-hospital exchange (issue #6, net helper; docs/exchange.md) ---
    network_peer_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="a member that has not answered a search (TLS handshake included) by then "
        "is reported as timed out; the others' answers are not held back",
    )
    network_transfer_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="a study transfer whose owner sends nothing for this long is broken off",
    )
    network_peer_refresh_seconds: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="how often peer checks look at the chain head (keep below the block time)",
    )
    network_break_glass_max_age_seconds: int = Field(
        default=900,
        gt=0,
        le=86_400,
        description="an owner honours a break-glass record on chain only this long after it",
    )
    # --- end of the network block ---
    # --- AI-training access (issue #6, train helper; docs/deidentification.md) ---
    # What a training credential retrieves is de-identified by the PS3.15 Annex E Basic
    # Profile; these switch on its two options for every training access of this node.
    deid_retain_full_dates: bool = Field(
        default=False,
        description="Retain Longitudinal Temporal Information, Full Dates Option (113106)",
    )
    deid_retain_patient_characteristics: bool = Field(
        default=False, description="Retain Patient Characteristics Option (113108)"
    )
    deid_uid_key_file: Path | None = Field(
        default=None,
        description="secret that maps UIDs for training (32 bytes, made on first use); "
        "default DATA_DIR/keys/deid-uid.key",
    )

    @property
    def deid_uid_key_path(self) -> Path:
        """Where the training UID secret lives."""
        return self.deid_uid_key_file or self.data_dir / "keys" / "deid-uid.key"

    # --- end of the AI-training block ---


def load_settings(**flags: Any) -> NodeSettings:
    """Build settings from flags that were given (None means 'not given')."""
    return NodeSettings(**{k: v for k, v in flags.items() if v is not None})
