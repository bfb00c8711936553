"""Federated vs centralized macro AUROC on synthetic non-IID sites (target ratio >= 0.99).

Runs ``federated.evaluate`` — centralized (pooled), FedAvg, FedProx, FedBN and local-only on the
same splits and seeds — and prints the federated/centralized ratios.

    PYTHONPATH=. python benchmarks/federated_quality.py --per-site 150 --rounds 10 --seeds 3

Writes benchmarks/out/federated_quality/results.json and auroc.png.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from federated.evaluate import EvalSettings, evaluate_methods, write_outputs
from federated.synth import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-site", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-seed", type=int, default=11)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="pacsmesh-quality-"))
    synthesize(data, 3, args.per_site, args.data_seed, image_size=args.image_size)
    started = time.perf_counter()
    results = evaluate_methods(
        data,
        list(range(args.seeds)),
        EvalSettings(rounds=args.rounds, image_size=args.image_size),
        progress=print,
    )
    results["wall_seconds"] = time.perf_counter() - started
    results["data"] = {"sites": 3, "per_site": args.per_site, "data_seed": args.data_seed}
    json_path, png_path = write_outputs(results, Path("benchmarks/out/federated_quality"))
    print("| method | macro AUROC (mean ± sd) | worst-site AUROC | locally rare findings |")
    print("|---|---|---|---|")
    for method, summary in results["methods"].items():
        rare = ", ".join(f"{s} {v:.3f}" for s, v in summary["locally_rare_auroc"].items() if v)
        print(
            f"| {method} | {summary['macro_auroc']:.3f} ± {summary['macro_auroc_std']:.3f} | "
            f"{summary['worst_site_auroc']:.3f} | {rare} |"
        )
    for method, ratio in results["federated_to_centralized_ratio"].items():
        print(f"{method}/centralized ratio: {ratio:.3f}")
    print(f"wrote {json_path}, {png_path}")


if __name__ == "__main__":
    main()
