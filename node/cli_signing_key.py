"""`pacsmesh node signing-key rotate`: a new token-signing key, usable while the node runs.

The running node takes up the new key at its next request (it watches the key file), signs with
it from then on, and goes on verifying the tokens the old key signed until they have expired.
Give it the same `--config` / `NODE_*` environment as `node serve`, like `node user`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer

from node.cli_users import ConfigFile, DataDir, _fail, _load
from node.errors import NodeError

signing_key_app = typer.Typer(help="The key this node signs its tokens with.", no_args_is_help=True)


@signing_key_app.command("rotate")
def rotate(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Sign new tokens with a new key; the old one verifies its tokens until they expire."""
    from node.auth import signing_key

    settings = _load(data_dir, config, None)
    try:
        new, retired = signing_key.rotate(
            signing_key.key_path(settings), signing_key.token_lifetime(settings)
        )
    except NodeError as exc:
        _fail(exc.message, code=1)
    until = datetime.fromtimestamp(retired.verifies_until, UTC).isoformat(timespec="seconds")
    typer.echo(json.dumps({"kid": new.kid, "retired_kid": retired.kid, "retired_until": until}))
