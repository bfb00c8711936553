"""``pacsmesh federated ...``: synthetic data, simulation, evaluation, and the Deployment Engine.

Heavy imports (torch, flwr) happen inside the commands so ``pacsmesh --help`` stays fast. Every
pacsmesh error class carries an ``exit_code``; the commands print its message (no traceback)
and exit with it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

federated_app = typer.Typer(
    help="Federated chest X-ray AI: train across hospitals without moving images.",
    no_args_is_help=True,
)

STRATEGY_HELP = "fedavg (default), fedprox or fedbn"


@contextmanager
def _errors() -> Iterator[None]:
    """Turn pacsmesh's typed errors into a one-line message and their exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(int(code)) from None


def _quiet_flower(verbose: bool) -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    if not verbose:
        import logging

        # Flower sets its logger's level when first imported: import it, then quiet it.
        from flwr.common.logger import FLOWER_LOGGER

        FLOWER_LOGGER.setLevel(logging.WARNING)
        logging.getLogger("flwr").setLevel(logging.WARNING)


@federated_app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output directory (site-1 ... site-N inside)")],
    sites: Annotated[int, typer.Option(help="Number of hospitals")] = 3,
    per_site: Annotated[int, typer.Option(help="Images per hospital")] = 100,
    seed: Annotated[int, typer.Option(help="Seed; the same seed writes the same files")] = 0,
    image_size: Annotated[int, typer.Option(help="Nominal matrix size in pixels")] = 256,
) -> None:
    """Write synthetic chest X-ray DICOM (DX) with labels, per-site skew included."""
    with _errors():
        from federated.synth import synthesize

        written = synthesize(out, sites, per_site, seed, image_size=image_size)
        for site_dir in written:
            typer.echo(f"{site_dir}  {len(list(site_dir.glob('*.dcm')))} images")


def _print_round(as_json: bool) -> Callable[[Any], None]:
    def show(record: Any) -> None:
        if as_json:
            return
        g = record.global_metrics
        typer.echo(
            f"round {record.server_round}: macro AUROC {_fmt(g.get('auroc_macro'))}, "
            f"worst site {_fmt(g.get('auroc_worst_site'))}, loss {_fmt(g.get('loss'))}, "
            f"sites {','.join(record.participants) or '-'}"
            + (f", dropped {','.join(record.dropped)}" if record.dropped else "")
            + f", model {record.model_sha256[:16]}"
        )
        for site, metrics in sorted(record.site_metrics.items()):
            ev = metrics.get("evaluate") or {}
            tr = metrics.get("train") or {}
            typer.echo(
                f"  {site}: AUROC {_fmt(ev.get('auroc_macro'))}, val loss {_fmt(ev.get('loss'))}, "
                f"train loss {_fmt(tr.get('train-loss'))}, n={tr.get('num-examples', '-')}"
            )

    return show


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "n/a" if number != number else f"{number:.3f}"


@federated_app.command()
def simulate(
    data: Annotated[Path, typer.Option(help="Directory with one sub-folder per hospital")],
    rounds: Annotated[int, typer.Option(help="Federated rounds")] = 3,
    strategy: Annotated[str, typer.Option(help=STRATEGY_HELP)] = "fedavg",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document")] = False,
    model: Annotated[str, typer.Option(help="small_cnn or densenet121")] = "small_cnn",
    image_size: Annotated[int, typer.Option(help="Model input size in pixels")] = 64,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round")] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate (Adam)")] = 3e-3,
    batch_size: Annotated[int, typer.Option(help="Batch size")] = 16,
    seed: Annotated[int, typer.Option(help="Seed for initial model and splits")] = 0,
    run_dir: Annotated[
        Path | None, typer.Option(help="Keep checkpoints and run log here; resumes if present")
    ] = None,
    secagg: Annotated[bool, typer.Option(help="Aggregate with SecAgg+")] = False,
    dp_clip: Annotated[float, typer.Option(help="DP: L2 clip of each update (0 = off)")] = 0.0,
    dp_epsilon: Annotated[float, typer.Option(help="DP: epsilon per round")] = 1.0,
    dp_delta: Annotated[float, typer.Option(help="DP: delta per round")] = 1e-5,
    separate_evaluate: Annotated[
        bool,
        typer.Option(
            help="Evaluate in a separate message after each round "
            "(default: in the next round's train message)"
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own log")] = False,
) -> None:
    """Run a whole federation on this machine and print per-round, per-site metrics."""
    _quiet_flower(verbose)
    with _errors():
        from federated.run_config import RunSettings
        from federated.simulate import discover_sites
        from federated.simulate import simulate as run_simulation

        settings = RunSettings.from_run_config(
            {
                "num-server-rounds": rounds,
                "strategy": strategy,
                "model": model,
                "image-size": image_size,
                "local-epochs": local_epochs,
                "lr": lr,
                "batch-size": batch_size,
                "seed": seed,
                "run-dir": str(run_dir) if run_dir else "",
                "secagg": secagg,
                "dp-clip": dp_clip,
                "dp-epsilon": dp_epsilon,
                "dp-delta": dp_delta,
                "evaluate-with-train": not separate_evaluate,
            }
        )
        sites = discover_sites(data)
        result = run_simulation(sites, settings, on_round=_print_round(as_json))
        federation = result.federation
        if as_json:
            from dataclasses import asdict

            from federated.run_log import json_safe

            document = {
                "run_id": federation.run_id,
                "strategy": settings.strategy,
                "sites": [s.site_id for s in sites],
                "resumed_from": federation.resumed_from,
                "rounds": [asdict(r) for r in federation.rounds],
                "final": asdict(federation.rounds[-1]) if federation.rounds else None,
            }
            typer.echo(json.dumps(json_safe(document), indent=2, sort_keys=True))
        elif federation.rounds:
            last = federation.rounds[-1]
            typer.echo(
                f"final: macro AUROC {_fmt(last.global_metrics.get('auroc_macro'))}, "
                f"worst site {_fmt(last.global_metrics.get('auroc_worst_site'))}, "
                f"model sha256 {last.model_sha256}"
            )
        else:
            typer.echo(f"nothing to do: the run in {run_dir} already finished {rounds} rounds")


@federated_app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="Directory with one sub-folder per hospital")],
    out: Annotated[Path, typer.Option(help="Where results.json and auroc.png go")],
    seeds: Annotated[int, typer.Option(help="Number of seeds (0, 1, ...)")] = 3,
    rounds: Annotated[int, typer.Option(help="Rounds (= epochs for pooled/local)")] = 6,
    methods: Annotated[
        str, typer.Option(help="Comma-separated: centralized,fedavg,fedprox,fedbn,local")
    ] = "centralized,fedavg,fedprox,fedbn,local",
    model: Annotated[str, typer.Option(help="small_cnn or densenet121")] = "small_cnn",
    image_size: Annotated[int, typer.Option(help="Model input size in pixels")] = 48,
    lr: Annotated[float, typer.Option(help="Learning rate (Adam)")] = 3e-3,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own log")] = False,
) -> None:
    """Compare centralized, FedAvg/FedProx/FedBN and local-only training on the same splits."""
    _quiet_flower(verbose)
    with _errors():
        from federated.evaluate import EvalSettings, evaluate_methods, write_outputs

        settings = EvalSettings(rounds=rounds, model=model, image_size=image_size, lr=lr)
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        results = evaluate_methods(
            data, list(range(seeds)), settings, chosen, progress=lambda line: typer.echo(line)
        )
        json_path, png_path = write_outputs(results, out)
        for method, summary in results["methods"].items():
            typer.echo(
                f"{method:<11} macro AUROC {_fmt(summary['macro_auroc'])} "
                f"(sd {_fmt(summary['macro_auroc_std'])}), "
                f"worst site {_fmt(summary['worst_site_auroc'])}"
            )
        for method, ratio in results["federated_to_centralized_ratio"].items():
            typer.echo(f"{method}/centralized macro AUROC ratio: {ratio:.3f}")
        typer.echo(f"wrote {json_path} and {png_path}")


def _require_files(*paths: Path) -> None:
    from federated.deployment import DeploymentError

    for path in paths:
        if not path.is_file():
            raise DeploymentError(f"{path} is not a file")


def _exec(argv: list[str], extra_env: dict[str, str] | None = None) -> None:
    """Replace this process with a Flower server, so its PID is the server's PID."""
    from federated.deployment import flower_env

    env = flower_env(extra_env)
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


@federated_app.command()
def superlink(
    ca_cert: Annotated[Path, typer.Option(help="Consortium CA certificate (PEM)")],
    cert: Annotated[Path, typer.Option(help="SuperLink TLS certificate (PEM)")],
    key: Annotated[Path, typer.Option(help="SuperLink TLS private key (PEM)")],
    fleet_address: Annotated[str, typer.Option(help="Where sites connect")] = "0.0.0.0:9092",
    control_address: Annotated[str, typer.Option(help="Where operators connect")] = "0.0.0.0:9093",
    serverappio_address: Annotated[
        str, typer.Option(help="Local ServerApp API")
    ] = "127.0.0.1:9091",
    database: Annotated[
        Path | None, typer.Option(help="SQLite state file (survives restarts)")
    ] = None,
) -> None:
    """Run the consortium's SuperLink: TLS, and only registered SuperNodes may connect."""
    with _errors():
        from federated.deployment import SuperLinkAddresses, superlink_argv

        _require_files(ca_cert, cert, key)
        addresses = SuperLinkAddresses(fleet_address, serverappio_address, control_address)
        _exec(superlink_argv(addresses, ca_cert, cert, key, database=database))


@federated_app.command()
def supernode(
    superlink_address: Annotated[
        str, typer.Option("--superlink", help="SuperLink Fleet API host:port")
    ],
    ca_cert: Annotated[Path, typer.Option(help="Consortium CA certificate (PEM)")],
    private_key: Annotated[Path, typer.Option(help="This site's EC key (OpenSSH); see `keygen`")],
    site_id: Annotated[str, typer.Option(help="This hospital's id in the consortium")],
    data_source: Annotated[
        str,
        typer.Option(help="dicomweb:https://node/dicom-web | a folder | nih:DIR | chexpert:DIR"),
    ],
    state_dir: Annotated[Path, typer.Option(help="Local state (FedBN layers, cache)")],
    clientappio_address: Annotated[
        str, typer.Option(help="Local ClientApp API")
    ] = "127.0.0.1:9094",
    labels: Annotated[
        Path | None, typer.Option(help="DICOMweb: labels CSV keyed by sop_instance_uid")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="DICOMweb: file holding the node's training token")
    ] = None,
    torch_threads: Annotated[int, typer.Option(help="torch threads (0 = all cores)")] = 0,
    stock_flower: Annotated[
        bool,
        typer.Option(
            help="Run Flower's stock flower-supernode: a fresh Python process per message, "
            "3 s polls (slower; see docs/federated.md)"
        ),
    ] = False,
) -> None:
    """Run this hospital's SuperNode, reading only its own node's images."""
    with _errors():
        from federated.deployment import supernode_argv

        _require_files(ca_cert, private_key, *(p for p in (labels, token_file) if p))
        _exec(
            supernode_argv(
                superlink_address, ca_cert, private_key, site_id, data_source, state_dir,
                clientappio_address=clientappio_address, torch_threads=torch_threads,
                labels=labels.resolve() if labels else None,
                token_file=token_file.resolve() if token_file else None,
                warm_clientapp=not stock_flower, poll_interval=None if stock_flower else 0.2,
            )
        )  # fmt: skip


@federated_app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Directory for NAME.key and NAME.pub")],
    name: Annotated[str, typer.Option(help="Key name, e.g. the site id")],
) -> None:
    """Make a SuperNode authentication key pair; give the .pub to the SuperLink operator."""
    with _errors():
        from federated.deployment import generate_node_keys

        private, public = generate_node_keys(out, name)
        typer.echo(f"private key {private} (stays at the site)\npublic key  {public}")


@federated_app.command()
def register(
    public_key: Annotated[Path, typer.Argument(help="A site's .pub from `keygen`")],
    control_address: Annotated[str, typer.Option(help="SuperLink Control API host:port")],
    ca_cert: Annotated[Path, typer.Option(help="Consortium CA certificate (PEM)")],
    flwr_home: Annotated[Path, typer.Option(help="Operator's Flower config dir")] = Path(
        "~/.pacsmesh/flwr"
    ),
) -> None:
    """Register a site's public key with the SuperLink (operator)."""
    with _errors():
        from federated.deployment import register_supernode, write_connection

        home = flwr_home.expanduser()
        write_connection(home, control_address, ca_cert)
        register_supernode(home, public_key)
        typer.echo(f"registered {public_key.name}")


@federated_app.command()
def run(
    control_address: Annotated[str, typer.Option(help="SuperLink Control API host:port")],
    ca_cert: Annotated[Path, typer.Option(help="Consortium CA certificate (PEM)")],
    run_config: Annotated[
        str, typer.Option(help="Overrides, e.g. \"num-server-rounds=10 strategy='fedprox'\"")
    ] = "",
    flwr_home: Annotated[Path, typer.Option(help="Operator's Flower config dir")] = Path(
        "~/.pacsmesh/flwr"
    ),
    stream: Annotated[bool, typer.Option(help="Follow the run's log until it ends")] = True,
) -> None:
    """Submit a training run of the pacsmesh Flower App to the consortium's SuperLink."""
    with _errors():
        from federated.deployment import parse_run_config, run_app, write_connection

        home = flwr_home.expanduser()
        write_connection(home, control_address, ca_cert)
        done = run_app(home, parse_run_config(run_config), stream=stream)
        typer.echo(done.stdout)


if __name__ == "__main__":
    federated_app()
