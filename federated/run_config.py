"""Typed run settings and node settings for the federation, parsed from Flower's configs.

Flower hands the ServerApp and ClientApp flat ``{str: bool|int|float|str}`` mappings: the run
config (``[tool.flwr.app.config]`` plus overrides, the same for every site) and the node config
(per SuperNode: which data source, which state dir). Parsing them once into frozen dataclasses
gives one place that names every key and rejects bad values with a clear message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedbn")


class FederatedConfigError(ValueError):
    """A run or node config value is missing or invalid (exit code 2 on the CLI)."""

    exit_code = 2


@dataclass(frozen=True)
class RunSettings:
    """Everything every site and the server agree on for one federated run."""

    num_server_rounds: int = 3
    strategy: str = "fedavg"
    model: str = "small_cnn"
    image_size: int = 64
    local_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 16
    proximal_mu: float = 0.1
    fraction_train: float = 1.0
    min_train_nodes: int = 2
    min_available_nodes: int = 2
    round_timeout: float = 600.0
    seed: int = 0
    val_fraction: float = 0.2
    # Privacy options. secagg: Flower's SecAgg+ masks each site's update so the server only
    # sees the sum. dp-*: each site clips its update to dp-clip (L2) and adds Gaussian noise.
    secagg: bool = False
    secagg_num_shares: int = 3
    secagg_threshold: int = 2
    # Sites send updates, not weights: an update of one round is far below 1, and a tight range
    # with 2**24 quantisation levels keeps the aggregate within ~1e-6 of the plain mean.
    secagg_clipping_range: float = 1.0
    secagg_quantization_range: int = 2**24
    # A site's weight in the masked sum is num_examples / max_weight (see secagg.py).
    secagg_max_weight: float = 1000.0
    dp_clip: float = 0.0
    dp_epsilon: float = 1.0
    dp_delta: float = 1e-5
    # One message exchange per site and round: round r's train message also asks the site to
    # evaluate the model it brings (round r-1's aggregate) before training; the last aggregate
    # gets one evaluate-only exchange at the end. False: a separate evaluate message after every
    # round's aggregation (two exchanges per round). Metrics are the same either way.
    evaluate_with_train: bool = True
    # Where the ServerApp writes checkpoints and the run log ("" = do not persist).
    run_dir: str = ""

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Parse Flower's run config (keys use dashes, e.g. ``num-server-rounds``)."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = field.name.replace("_", "-")
            if key not in config:
                continue
            raw = config[key]
            default = getattr(cls, field.name)
            values[field.name] = _coerce(key, raw, type(default))
        settings = cls(**values)
        settings.validate()
        return settings

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The inverse of ``from_run_config``: a flat dash-keyed mapping."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @property
    def dp_enabled(self) -> bool:
        """Whether sites add differential-privacy noise to their updates."""
        return self.dp_clip > 0.0

    def validate(self) -> None:
        """Reject values that would only fail later, deep inside a round."""
        if self.strategy not in STRATEGIES:
            raise FederatedConfigError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.num_server_rounds < 1:
            raise FederatedConfigError("num-server-rounds must be at least 1")
        if self.local_epochs < 1 or self.batch_size < 1:
            raise FederatedConfigError("local-epochs and batch-size must be at least 1")
        if not 0.0 < self.fraction_train <= 1.0:
            raise FederatedConfigError("fraction-train must be in (0, 1]")
        if self.min_train_nodes < 1 or self.min_available_nodes < 1:
            raise FederatedConfigError("min-train-nodes and min-available-nodes must be >= 1")
        if self.dp_clip < 0.0:
            raise FederatedConfigError("dp-clip must be >= 0 (0 disables DP)")
        if self.dp_enabled and not (self.dp_epsilon > 0.0 and 0.0 < self.dp_delta < 1.0):
            raise FederatedConfigError("dp-epsilon must be > 0 and dp-delta in (0, 1)")
        if self.secagg and self.secagg_threshold >= self.secagg_num_shares:
            raise FederatedConfigError("secagg-threshold must be below secagg-num-shares")


@dataclass(frozen=True)
class NodeSettings:
    """What one site's SuperNode is told about itself (its node config)."""

    site_id: str
    data_source: str
    state_dir: Path
    # torch intra-op threads for this site's ClientApp (0 = torch's default: all cores).
    torch_threads: int = 0
    # DICOMweb sources: the labels CSV (keyed by SOP Instance UID) and a file holding the
    # node's training credential (a bearer token; kept in a file so it never sits in a config
    # or a process list). Decoded images are cached under state_dir/cache.
    labels: Path | None = None
    token_file: Path | None = None

    @property
    def cache_dir(self) -> Path:
        """The hospital's own cache of decoded images (DICOMweb sources)."""
        return self.state_dir / "cache"

    def token(self) -> str | None:
        """The DICOMweb bearer token, read from ``token-file`` when one is configured."""
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise FederatedConfigError(f"cannot read token-file {self.token_file}") from exc

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any], node_id: int) -> NodeSettings:
        """Parse a SuperNode's node config (``site-id``, ``data-source``, ``state-dir``, ...)."""
        source = str(config.get("data-source", "")).strip()
        if not source:
            raise FederatedConfigError(
                "node config has no data-source; start the SuperNode with "
                "--node-config \"data-source='dicomweb:https://...'\""
            )
        site_id = str(config.get("site-id", "")).strip() or f"node-{node_id}"
        state_dir = str(config.get("state-dir", "")).strip()
        base = Path(state_dir) if state_dir else Path.home() / ".pacsmesh" / "federated" / site_id
        try:
            threads = int(config.get("torch-threads", 0))
        except (TypeError, ValueError) as exc:
            raise FederatedConfigError("torch-threads must be an integer") from exc
        labels = str(config.get("labels", "")).strip()
        token_file = str(config.get("token-file", "")).strip()
        return cls(
            site_id=site_id,
            data_source=source,
            state_dir=base,
            torch_threads=threads,
            labels=Path(labels) if labels else None,
            token_file=Path(token_file) if token_file else None,
        )


def _coerce(key: str, raw: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0"):
            return raw.lower() in ("true", "1")
        if isinstance(raw, int):
            return bool(raw)
        raise FederatedConfigError(f"{key} must be true or false, got {raw!r}")
    try:
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if kind is float:
            return float(raw)
    except (TypeError, ValueError) as exc:
        noun = "an integer" if kind is int else "a number"
        raise FederatedConfigError(f"{key} must be {noun}, got {raw!r}") from exc
    return str(raw)
