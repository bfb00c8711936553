"""Does federation pay? Centralized vs FedAvg/FedProx/FedBN vs local-only, same splits and seeds.

For every seed each site's data is split once (``data.load_site`` with that seed); every method
trains on the same train splits with the same compute per round (one pass over each site's
train split) and is scored on the same validation splits. AUROC is computed per finding within
each site and then averaged over sites (``metrics.federated_auroc``), never pooled across sites.

- centralized: one model on all sites' train splits pooled: the upper reference a consortium
  could only reach by moving images.
- fedavg / fedprox / fedbn: the real ServerApp and ClientApp in the in-process simulation.
- local: every site trains alone and is scored on its own validation split.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federated.run_config import RunSettings
from federated.simulate import Site, discover_sites, simulate

METHODS: tuple[str, ...] = ("centralized", "fedavg", "fedprox", "fedbn", "local")
FEDERATED_METHODS = ("fedavg", "fedprox", "fedbn")


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (exit code 2 on the CLI)."""

    exit_code = 2


@dataclass(frozen=True)
class EvalSettings:
    """Training budget shared by every method."""

    rounds: int = 5
    model: str = "small_cnn"
    image_size: int = 64
    local_epochs: int = 1
    lr: float = 3e-3
    batch_size: int = 16
    val_fraction: float = 0.3
    proximal_mu: float = 0.01

    def run_settings(self, strategy: str, seed: int, run_dir: str = "") -> RunSettings:
        """The federated run config for one method and seed."""
        return RunSettings(
            num_server_rounds=self.rounds,
            strategy=strategy,
            model=self.model,
            image_size=self.image_size,
            local_epochs=self.local_epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            proximal_mu=self.proximal_mu,
            seed=seed,
            val_fraction=self.val_fraction,
            run_dir=run_dir,
        )


@dataclass
class RoundScore:
    """Site-averaged AUROCs of one method after one round."""

    server_round: int
    macro: float
    worst_site: float
    per_finding: dict[str, float]
    per_site: dict[str, dict[str, float]]


@dataclass
class MethodRun:
    """One method, one seed: a score per round and the wall time."""

    method: str
    seed: int
    rounds: list[RoundScore] = field(default_factory=list)
    seconds: float = 0.0


Progress = Callable[[str], None]


def evaluate_methods(
    data_dir: Path,
    seeds: Sequence[int],
    settings: EvalSettings,
    methods: Sequence[str] = METHODS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every method for every seed; return the JSON-ready results."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise EvaluationError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not seeds:
        raise EvaluationError("at least one seed is needed")
    sites = discover_sites(data_dir)
    import torch

    # One intra-op thread: on a shared 2-core machine torch's spinning OpenMP workers cost ten
    # times more than they give, and every method gets the same treatment.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _evaluate(sites, seeds, settings, methods, progress)
    finally:
        torch.set_num_threads(threads)


def _evaluate(
    sites: Sequence[Site],
    seeds: Sequence[int],
    settings: EvalSettings,
    methods: Sequence[str],
    progress: Progress | None,
) -> dict[str, Any]:
    runs: list[MethodRun] = []
    rare: dict[str, list[str]] = {}
    for seed in seeds:
        for method in methods:
            started = time.perf_counter()
            if method == "centralized":
                scores = _pooled_or_local(sites, settings, seed, pooled=True)
            elif method == "local":
                scores = _pooled_or_local(sites, settings, seed, pooled=False)
            else:
                scores = _federated(sites, settings, seed, method)
            run = MethodRun(method, seed, scores, time.perf_counter() - started)
            runs.append(run)
            if progress is not None:
                last = scores[-1]
                progress(
                    f"seed {seed} {method:<11} macro AUROC {last.macro:.3f} "
                    f"worst site {last.worst_site:.3f} ({run.seconds:.0f} s)"
                )
        if not rare:
            rare = locally_rare_findings(sites, settings, seed)
    return summarize(runs, rare, settings, seeds, [s.site_id for s in sites])


def _datasets(
    sites: Sequence[Site], settings: EvalSettings, seed: int, split: str
) -> dict[str, Any]:
    from federated.data import load_site

    return {
        s.site_id: load_site(
            s.data_source, settings.image_size, split, seed=seed, val_fraction=settings.val_fraction
        )
        for s in sites
    }


def _score(server_round: int, site_preds: dict[str, tuple[np.ndarray, np.ndarray]]) -> RoundScore:
    from federated.metrics import federated_auroc

    report = federated_auroc(site_preds)
    return RoundScore(
        server_round=server_round,
        macro=report.macro,
        worst_site=report.worst_site,
        per_finding=dict(report.per_finding),
        per_site={s: dict(v) for s, v in report.per_site.items()},
    )


def _pooled_or_local(
    sites: Sequence[Site], settings: EvalSettings, seed: int, pooled: bool
) -> list[RoundScore]:
    import torch
    from torch.utils.data import ConcatDataset

    from federated.data import make_loader
    from federated.task import build_model, evaluate, train

    train_sets = _datasets(sites, settings, seed, "train")
    val_sets = _datasets(sites, settings, seed, "val")

    def fresh() -> torch.nn.Module:
        torch.manual_seed(seed)  # the same start as the federated runs (initial_arrays)
        return build_model(settings.model, settings.image_size)

    data: dict[str, Any]
    if pooled:
        models = {"pooled": fresh()}
        data = {"pooled": ConcatDataset(list(train_sets.values()))}
    else:
        models = {site: fresh() for site in train_sets}
        data = dict(train_sets)
    scores = []
    for server_round in range(1, settings.rounds + 1):
        for name, model in models.items():
            loader = make_loader(
                data[name], settings.batch_size, shuffle=True, seed=seed * 1000 + server_round
            )
            train(model, loader, epochs=settings.local_epochs, lr=settings.lr)
        preds = {}
        for site, val in val_sets.items():
            model = models["pooled" if pooled else site]
            _, probs, labels = evaluate(model, make_loader(val, 64))
            preds[site] = (probs, labels)
        scores.append(_score(server_round, preds))
    return scores


def _federated(
    sites: Sequence[Site], settings: EvalSettings, seed: int, method: str
) -> list[RoundScore]:
    from federated.task import FINDINGS

    with tempfile.TemporaryDirectory(prefix=f"pacsmesh-{method}-") as tmp:
        result = simulate(sites, settings.run_settings(method, seed), state_root=Path(tmp))
    scores = []
    for record in result.federation.rounds:
        per_site: dict[str, dict[str, float]] = {}
        for site, metrics in record.site_metrics.items():
            values = (metrics.get("evaluate") or {}).get("auroc") or []
            per_site[site] = {
                f: float(v) for f, v in zip(FINDINGS, values, strict=False) if _defined(v)
            }
        per_finding = {
            f: float(v)
            for f, v in zip(
                FINDINGS, record.global_metrics.get("auroc_per_finding", []), strict=False
            )
            if _defined(v)
        }
        scores.append(
            RoundScore(
                server_round=record.server_round,
                macro=float(record.global_metrics.get("auroc_macro", math.nan)),
                worst_site=float(record.global_metrics.get("auroc_worst_site", math.nan)),
                per_finding=per_finding,
                per_site=per_site,
            )
        )
    return scores


def _defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def locally_rare_findings(
    sites: Sequence[Site], settings: EvalSettings, seed: int
) -> dict[str, list[str]]:
    """Per site, the findings it sees at under half the rate of the other sites (train split).

    These are where a hospital gains most from the consortium: too few local positives to learn
    the pattern alone, plenty elsewhere.
    """
    from federated.task import FINDINGS

    train_sets = _datasets(sites, settings, seed, "train")
    counts = {}
    for site, dataset in train_sets.items():
        labels = np.stack(
            [np.asarray(dataset[i][1], dtype=np.float64) for i in range(len(dataset))]
        )
        counts[site] = (np.nansum(labels == 1, axis=0), np.sum(~np.isnan(labels), axis=0))
    rare: dict[str, list[str]] = {}
    for site, (pos, known) in counts.items():
        other_pos = sum(c[0] for s, c in counts.items() if s != site)
        other_known = sum(c[1] for s, c in counts.items() if s != site)
        mine = pos / np.maximum(known, 1)
        others = other_pos / np.maximum(other_known, 1)
        rare[site] = [
            f for j, f in enumerate(FINDINGS) if others[j] > 0 and mine[j] < 0.5 * others[j]
        ]
    return rare


def summarize(
    runs: Sequence[MethodRun],
    rare: dict[str, list[str]],
    settings: EvalSettings,
    seeds: Sequence[int],
    site_ids: Sequence[str],
) -> dict[str, Any]:
    """Means over seeds per method, per-round curves, and the locally-rare-finding comparison."""
    methods = list(dict.fromkeys(r.method for r in runs))
    summary: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r.method == method]
        finals = [r.rounds[-1] for r in mine]
        curve = [
            _mean([r.rounds[i].macro for r in mine if i < len(r.rounds)])
            for i in range(settings.rounds)
        ]
        rare_auroc = {
            site: _mean(
                [
                    f.per_site.get(site, {}).get(finding, math.nan)
                    for f in finals
                    for finding in rare.get(site, [])
                ]
            )
            for site in site_ids
        }
        summary[method] = {
            "macro_auroc": _mean([f.macro for f in finals]),
            "macro_auroc_std": _std([f.macro for f in finals]),
            "worst_site_auroc": _mean([f.worst_site for f in finals]),
            "per_finding": {
                k: _mean([f.per_finding.get(k, math.nan) for f in finals])
                for k in sorted({k for f in finals for k in f.per_finding})
            },
            "macro_auroc_per_round": curve,
            "locally_rare_auroc": rare_auroc,
            "seconds_mean": _mean([r.seconds for r in mine]),
        }
    ratios = {}
    if "centralized" in summary:
        central = summary["centralized"]["macro_auroc"]
        for method in FEDERATED_METHODS:
            if method in summary and central > 0:
                ratios[method] = summary[method]["macro_auroc"] / central
    return {
        "settings": asdict(settings),
        "seeds": list(seeds),
        "sites": list(site_ids),
        "locally_rare_findings": rare,
        "methods": _json_safe(summary),
        "federated_to_centralized_ratio": ratios,
        "runs": _json_safe([asdict(r) for r in runs]),
    }


def _mean(values: Sequence[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return float(np.mean(known)) if known else math.nan


def _std(values: Sequence[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return float(np.std(known)) if len(known) > 1 else 0.0


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``auroc.png`` (macro AUROC per round, one line per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, data in results["methods"].items():
        curve = [math.nan if v is None else v for v in data["macro_auroc_per_round"]]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=method)
    ax.set_xlabel("round (one pass over each site's train split)")
    ax.set_ylabel("macro AUROC (per site, then averaged)")
    ax.set_title(f"pacsmesh federated evaluation, {len(results['seeds'])} seed(s)")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = out_dir / "auroc.png"
    fig.savefig(png_path)
    plt.close(fig)
    return json_path, png_path
