"""A SuperNode whose ClientApp processes start warm: torch and pacsmesh are imported once.

Flower's default ``subprocess`` isolation has the SuperNode's SuperExec launch a fresh
``flwr-clientapp`` Python process for every message (train, evaluate, each SecAgg+ stage); that
process imports torch, flwr and pacsmesh before it can start (~2.5 s on an idle core, 5 s on a
busy one) and the SuperExec looks for new work only once a second. This wrapper runs
``flower-supernode --isolation process`` as its child and takes the SuperExec's place:

- the wrapper imports the ClientApp's modules once, then never opens a gRPC channel itself (gRPC
  state does not survive ``fork``);
- a forked *poller* asks the SuperNode's ClientAppIo API for a pending task every 0.1 s, claims
  it and hands the one-time token back through a pipe;
- a forked *worker* runs Flower's own ``run_clientapp`` with that token, exactly what
  ``flwr-clientapp --token`` does, but starts with everything already imported.

Each message still runs in its own process (a crash or leak in one round cannot reach the next,
as with Flower's isolation), TLS and SuperNode authentication on the Fleet API are unchanged, and
the ClientAppIo API stays on the SuperNode's loopback address, as in subprocess mode.

    python -m federated.clientapp_runner --clientappio-api-address 127.0.0.1:9094 -- \
        flower-supernode --isolation process --clientappio-api-address 127.0.0.1:9094 ...
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import select
import signal
import subprocess
import sys
import time
import types
from collections.abc import Sequence

POLL_INTERVAL_S = 0.1
_PR_SET_PDEATHSIG = 1


def with_prompt_backoff(module: types.ModuleType, name: str) -> None:
    """Make ``module.name`` (a Flower object pull) retry after 0.05 s, doubling to 1 s."""
    pull = getattr(module, name)
    if not isinstance(pull, functools.partial):
        setattr(module, name, functools.partial(pull, initial_backoff=0.05, backoff_cap=1.0))


def _die_with_parent() -> None:
    """In the SuperNode child: get SIGKILL if this wrapper dies, so no orphan keeps serving."""
    # Not Linux: no prctl; the process-group kill the callers use still applies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _preload() -> None:
    """Import what every ClientApp message needs, once, before any fork."""
    from flwr.supernode.runtime import run_clientapp  # noqa: F401

    import federated.client_app
    import federated.data
    import federated.metrics
    import federated.task  # noqa: F401

    # ``build_model`` imports MONAI lazily (the small CNN never needs it); in a forked worker
    # that import (1-2 s) would be paid again by every DenseNet-121 message, twice a round.
    with contextlib.suppress(ImportError):
        import monai.networks.nets.densenet  # noqa: F401


def _poll_for_token(address: str, write_fd: int) -> None:
    """In a forked child: wait for a pending ClientApp task, claim it, write its token."""
    from flwr.proto.appio_pb2 import ClaimTaskRequest, PullPendingTasksRequest
    from flwr.proto.clientappio_pb2_grpc import ClientAppIoStub
    from flwr.supercore.grpc import create_channel

    channel = create_channel(server_address=address, insecure=True, root_certificates=None)
    stub = ClientAppIoStub(channel)
    while True:
        try:
            tasks = stub.PullPendingTasks(PullPendingTasksRequest()).tasks
            if tasks:
                token = stub.ClaimTask(ClaimTaskRequest(task_id=tasks[0].task_id)).token
                if token:
                    os.write(write_fd, token.encode() + b"\n")
                    return
        except Exception:
            time.sleep(1.0)
        time.sleep(POLL_INTERVAL_S)


def _run_task(address: str, token: str, parent_pid: int) -> None:
    """In a forked child: run one ClientApp task as ``flwr-clientapp --token`` would."""
    from flwr.supernode.runtime import run_clientapp as runtime
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    # The task is pending as soon as the SuperNode has the message's header, before it has pulled
    # the message's objects (the model) from the SuperLink. A worker that starts that early finds
    # the objects missing and Flower's pull backs off for 1 s first; start at 0.05 s instead.
    with_prompt_backoff(runtime, "pull_and_inflate_object_from_tree")
    run_clientapp(
        clientappio_api_address=address, token=token, insecure=True, parent_pid=parent_pid
    )


def _fork(target: object, *args: object) -> int:
    pid = os.fork()
    if pid == 0:
        # A forked poller or worker must not outlive the wrapper: restore the default SIGTERM
        # and SIGINT (the wrapper's handlers only forward to the SuperNode) and ask the kernel
        # to SIGKILL it if the wrapper dies, however it dies.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent()
        if os.getppid() == 1:  # the wrapper died between fork and prctl
            os._exit(1)
        code = 0
        try:
            target(*args)  # type: ignore[operator]
        except SystemExit as done:  # run_clientapp ends with sys.exit
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


def serve(address: str, supernode_argv: Sequence[str]) -> int:
    """Run the SuperNode and feed its ClientApp tasks to warm forked workers until it exits."""
    _preload()
    supernode = subprocess.Popen(list(supernode_argv), preexec_fn=_die_with_parent)

    def forward(signum: int, _frame: object) -> None:
        supernode.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    me = os.getpid()
    read_fd, write_fd = os.pipe()
    poller = _fork(_poll_for_token, address, write_fd)
    pending = b""
    exit_code: int | None = None
    while exit_code is None:
        ready, _, _ = select.select([read_fd], [], [], 0.5)
        if ready:
            pending += os.read(read_fd, 4096)
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                _fork(_run_task, address, line.decode(), me)
                # That poller is done: the next message must not wait for it to be reaped.
                poller = _fork(_poll_for_token, address, write_fd)
        # Reap finished children (waitpid(-1) also reaps the SuperNode, so its status is taken
        # here, not from Popen).
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == supernode.pid:
                code = os.waitstatus_to_exitcode(status)
                # Killed by a signal: report it the way a shell would.
                exit_code = code if code >= 0 else 128 - code
    with contextlib.suppress(ProcessLookupError):
        os.kill(poller, signal.SIGKILL)
    return exit_code


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``--clientappio-api-address ADDR -- flower-supernode ...``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clientappio-api-address", required=True)
    parser.add_argument("supernode", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.supernode[1:] if args.supernode[:1] == ["--"] else args.supernode
    if not command:
        parser.error("give the flower-supernode command after --")
    sys.exit(serve(args.clientappio_api_address, command))


if __name__ == "__main__":
    main()
