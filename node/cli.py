"""The `pacsmesh` console script: one entry point for every role (node, ledger, federated)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pacsmesh",
    help="pacsmesh: a secure federated network for medical images and records.",
    no_args_is_help=True,
)
node_app = typer.Typer(help="Run and administer a hospital node.", no_args_is_help=True)
app.add_typer(node_app, name="node")


def main() -> None:
    """Run the pacsmesh command line."""
    app()


if __name__ == "__main__":
    main()
