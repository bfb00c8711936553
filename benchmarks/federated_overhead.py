"""Time per federated round, split into compute and framework overhead; bytes per site.

Runs the real Deployment Engine on loopback — a TLS SuperLink with SuperNode authentication and
three authenticated SuperNodes — and submits the pacsmesh Flower App with ``flwr run``. Each
site reports how long its ClientApp spent computing (training / evaluating); the ServerApp logs
the wall time of each exchange. By default a round is one exchange per site (the train message
also evaluates the previous model): overhead = its wall time - the slowest site's evaluation +
training. With ``--separate-evaluate`` a round is a train and an evaluate exchange: overhead =
their wall times - the slowest site's training - the slowest site's evaluation. Overhead is:
ClientApp process start (a fork of a warm process by default, a fresh ``flwr-clientapp`` Python
process with ``--stock-flower``), polling, serialisation, TLS transport and the SuperLink's
queueing.

    PYTHONPATH=. python benchmarks/federated_overhead.py --model small_cnn --image-size 64
    PYTHONPATH=. python benchmarks/federated_overhead.py --model densenet121 --image-size 32
    PYTHONPATH=. python benchmarks/federated_overhead.py --model small_cnn --secagg
    PYTHONPATH=. python benchmarks/federated_overhead.py --model small_cnn --stock-flower
    PYTHONPATH=. python benchmarks/federated_overhead.py --model small_cnn --separate-evaluate

Writes benchmarks/out/federated_overhead-<model>.json and prints a Markdown table row.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from federated.deployment import (
    SuperLinkAddresses,
    flower_env,
    generate_dev_pki,
    generate_node_keys,
    list_supernodes,
    register_supernode,
    run_app,
    superlink_argv,
    supernode_argv,
    write_connection,
)
from federated.synth import synthesize


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn", choices=["small_cnn", "densenet121"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-site", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--secagg", action="store_true", help="aggregate with SecAgg+")
    parser.add_argument(
        "--stock-flower",
        action="store_true",
        help="stock flower-supernode: a fresh ClientApp process per message, 3 s polls",
    )
    parser.add_argument(
        "--separate-evaluate",
        action="store_true",
        help="evaluate in a separate message after each round (evaluate-with-train = false)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pacsmesh-bench-"))
    ca, cert, key = generate_dev_pki(work / "pki")
    addresses = SuperLinkAddresses(
        fleet=f"127.0.0.1:{free_port()}",
        serverappio=f"127.0.0.1:{free_port()}",
        control=f"127.0.0.1:{free_port()}",
    )
    flwr_home = work / "flwr-home"
    env = flower_env({"FLWR_HOME": str(flwr_home)})
    logs = work / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> None:
        with (logs / f"{name}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(argv, env=env, stdout=out, stderr=out, start_new_session=True)
            )

    try:
        start("superlink", superlink_argv(addresses, ca, cert, key))
        write_connection(flwr_home, addresses.control, ca)
        wait(lambda: port_open(addresses.control), 60, "SuperLink")
        sites = synthesize(work / "data", 3, args.per_site, seed=1, image_size=args.image_size)
        for site in sites:
            private, public = generate_node_keys(work / "keys", site.name)
            register_supernode(flwr_home, public)
            start(
                site.name,
                supernode_argv(
                    addresses.fleet, ca, private, site.name, str(site), work / "state" / site.name,
                    clientappio_address=f"127.0.0.1:{free_port()}", torch_threads=1,
                    warm_clientapp=not args.stock_flower,
                    poll_interval=None if args.stock_flower else 0.2,
                ),
            )  # fmt: skip
        wait(
            lambda: sum(n["status"] == "online" for n in list_supernodes(flwr_home)) == 3,
            120,
            "SuperNodes",
        )
        run_dir = work / "run"
        started = time.perf_counter()
        run_app(
            flwr_home,
            {
                "num-server-rounds": args.rounds,
                "model": args.model,
                "image-size": args.image_size,
                "batch-size": args.batch_size,
                "min-available-nodes": 3,
                "min-train-nodes": 3,
                "run-dir": str(run_dir),
                "secagg": args.secagg,
                "evaluate-with-train": not args.separate_evaluate,
            },
            timeout=3600,
        )
        total = time.perf_counter() - started
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

    rounds = [json.loads(x) for x in (run_dir / "run-log.jsonl").read_text().splitlines()]
    checkpoint = np.load(run_dir / "checkpoints" / "round-0001.npz")
    model_bytes = sum(checkpoint[k].nbytes for k in checkpoint.files if not k.startswith("__"))
    rows = []
    fused = any(r.get("evaluation", {}).get("carried_by") == "next-train-message" for r in rounds)
    for previous, record in zip([None, *rounds], rounds, strict=False):
        sites = record["site_metrics"]
        if fused:
            # One exchange per site: round r's train message also evaluated round r-1's model
            # (before training), so a site's compute is its evaluation of that model plus its
            # training, and the round is that one exchange.
            before = previous["site_metrics"] if previous else {}
            compute = max(
                s["train"]["train-seconds"]
                + (before.get(name, {}).get("evaluate", {}).get("eval_seconds") or 0.0)
                for name, s in sites.items()
            )
            wall = record["timing"]["train_s"]
        else:
            train_compute = max(s["train"]["train-seconds"] for s in sites.values())
            eval_compute = max(s["evaluate"]["eval_seconds"] for s in sites.values())
            wall = record["timing"]["train_s"] + record["timing"]["evaluate_s"]
            compute = train_compute + eval_compute
        rows.append(
            {
                "round": record["server_round"],
                "wall_s": wall,
                "compute_s": compute,
                "overhead_s": wall - compute,
                "overhead_share": (wall - compute) / wall,
            }
        )
    # Round 1 also pays first-use costs (DICOM decode cache, imports): report rounds 2.. too.
    steady = rows[1:] or rows
    summary = {
        "model": args.model,
        "secagg": args.secagg,
        "stock_flower": args.stock_flower,
        "image_size": args.image_size,
        "images_per_site": args.per_site,
        "rounds": rows,
        "mean_wall_s": statistics.mean(r["wall_s"] for r in steady),
        "mean_compute_s": statistics.mean(r["compute_s"] for r in steady),
        "mean_overhead_s": statistics.mean(r["overhead_s"] for r in steady),
        "mean_overhead_share": statistics.mean(r["overhead_share"] for r in steady),
        "evaluate_with_train": fused,
        # Once per run with evaluation in the train messages: the last model's evaluate-only
        # exchange (wall time, slowest site's compute).
        "final_evaluate_s": rounds[-1]["timing"].get("evaluate_s") if fused else None,
        "final_evaluate_compute_s": (
            max(s["evaluate"]["eval_seconds"] for s in rounds[-1]["site_metrics"].values())
            if fused
            else None
        ),
        "model_bytes": int(model_bytes),
        # Per site per round: the global model down once per exchange (train, and evaluate
        # unless it rides on the train message), the trained model up once, plus metrics (a
        # few hundred bytes). Payload only, before gRPC/TLS framing.
        "bytes_down_per_site_per_round": int((1 if fused else 2) * model_bytes),
        "bytes_up_per_site_per_round": int(model_bytes),
        "run_total_s": total,
        "cpu_count": os.cpu_count(),
    }
    out = Path("benchmarks/out")
    out.mkdir(parents=True, exist_ok=True)
    tag = (
        f"{args.model}{'-secagg' if args.secagg else ''}{'-stock' if args.stock_flower else ''}"
        f"{'-separate' if args.separate_evaluate else ''}"
    )
    (out / f"federated_overhead-{tag}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(
        f"| {tag} @ {args.image_size} px, {args.per_site} img/site | "
        f"{summary['mean_wall_s']:.1f} s | {summary['mean_compute_s']:.1f} s | "
        f"{summary['mean_overhead_s']:.1f} s ({100 * summary['mean_overhead_share']:.0f}%) | "
        f"{model_bytes / 1e6:.2f} MB down x{1 if fused else 2}, up x1 |"
    )


if __name__ == "__main__":
    main()
