"""``flower-supernode`` with a shorter idle poll: Flower waits 3 s between empty pulls.

The SuperNode's main loop (flwr 1.32, ``supernode/start_client_internal.py``) pulls the
SuperLink for a message and, when there is none, sleeps 3 s; waiting for a ClientApp's reply and
for a reply object it sleeps 0.5 s per check. A site that has just sent its train reply therefore
usually misses the evaluate message the server sends a moment later and picks it up ~3 s late —
twice per round; and a message's objects (the model) that are not on the SuperLink yet are
retried after 1 s, then 2 s, ... Flower has no setting for these waits, so this entry point caps
every sleep in that one module at ``--poll-interval`` seconds (default 0.2), starts the object
retries at 0.05 s, and then runs Flower's unchanged ``flower-supernode`` command line. Only
the waiting changes: the messages, TLS and SuperNode authentication are Flower's own. Each
empty pull is one small authenticated gRPC call, so a consortium of tens of hospitals adds a few
hundred tiny requests per minute to the SuperLink.

    python -m federated.supernode_main --poll-interval 0.2 -- <flower-supernode arguments>
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Sequence

from federated.clientapp_runner import with_prompt_backoff

DEFAULT_POLL_INTERVAL_S = 0.2


def _capped_time(limit: float) -> types.ModuleType:
    """A stand-in for the ``time`` module whose ``sleep`` never waits longer than ``limit``."""
    shim = types.ModuleType("time")
    shim.__dict__.update(time.__dict__)
    shim.sleep = lambda seconds: time.sleep(min(seconds, limit))  # type: ignore[attr-defined]
    return shim


def main(argv: Sequence[str] | None = None) -> None:
    """``[--poll-interval S] [--] <flower-supernode arguments>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    limit = DEFAULT_POLL_INTERVAL_S
    if args[:1] == ["--poll-interval"]:
        limit = float(args[1])
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    # The loop looks up ``time.sleep`` through its module's global ``time`` on every call.
    start_client_internal.time = _capped_time(limit)  # type: ignore[attr-defined]
    # A message shows up before its objects (the model) are all on the SuperLink; Flower's pull
    # then backs off 1 s first. Start at 0.05 s, doubling to 1 s.
    with_prompt_backoff(start_client_internal, "pull_objects")
    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
