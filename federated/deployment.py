"""Flower's Deployment Engine for a real consortium: SuperLink, SuperNodes, runs.

One hospital (or a neutral operator) runs the SuperLink; every hospital runs a SuperNode beside
its pacsmesh node, pointed at that node's DICOMweb through its node config. Transport is TLS
with certificates from the consortium CA; SuperNodes authenticate with an EC key pair whose
public half the operator registered (``flwr supernode register``), so an unknown machine
cannot join. These helpers build the exact Flower command lines so the CLI, the tests and the
benchmarks start the same thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "flwr-app"
REPO_ROOT = Path(__file__).resolve().parent.parent
CONNECTION_NAME = "pacsmesh"


class DeploymentError(RuntimeError):
    """A Deployment Engine step failed (exit code 6 on the CLI)."""

    exit_code = 6


@dataclass(frozen=True)
class SuperLinkAddresses:
    """The three APIs a SuperLink serves: sites, the ServerApp, and operators."""

    fleet: str = "0.0.0.0:9092"
    serverappio: str = "127.0.0.1:9091"
    control: str = "0.0.0.0:9093"


def _bin(name: str) -> str:
    """A Flower console script from the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flower_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: no telemetry, and ``federated`` importable."""
    env = dict(os.environ)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # The SuperLink and SuperNodes spawn flower-superexec / flwr-serverapp / flwr-clientapp
    # by name: the interpreter's own bin dir must come first on PATH.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *env.get("PATH", "").split(os.pathsep)])
    env.update(extra or {})
    return env


def superlink_argv(
    addresses: SuperLinkAddresses,
    ca_cert: Path,
    cert: Path,
    key: Path,
    database: Path | None = None,
    supernode_auth: bool = True,
) -> list[str]:
    """``flower-superlink`` with TLS, SuperNode authentication and no runtime installs."""
    argv = [
        _bin("flower-superlink"),
        "--ssl-ca-certfile", str(ca_cert),
        "--ssl-certfile", str(cert),
        "--ssl-keyfile", str(key),
        "--fleet-api-address", addresses.fleet,
        "--serverappio-api-address", addresses.serverappio,
        "--control-api-address", addresses.control,
        # The federated package is installed at every site; a run never pulls code.
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if supernode_auth:
        argv.append("--enable-supernode-auth")
    if database is not None:
        argv += ["--database", str(database)]
    return argv


def node_config_arg(values: Mapping[str, str | int | float | bool]) -> str:
    """Format a node config for ``--node-config`` (TOML values, space separated)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int | float):
            rendered = repr(value)
        else:
            if "'" in value:
                raise DeploymentError(f"node config value for {key} may not contain a quote")
            rendered = f"'{value}'"
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def supernode_argv(
    superlink: str,
    ca_cert: Path,
    private_key: Path,
    site_id: str,
    data_source: str,
    state_dir: Path,
    clientappio_address: str = "127.0.0.1:9094",
    max_wait_time: float | None = None,
    torch_threads: int = 0,
    labels: Path | None = None,
    token_file: Path | None = None,
    warm_clientapp: bool = True,
    poll_interval: float | None = 0.2,
) -> list[str]:
    """``flower-supernode`` for one site, authenticated, its data source in the node config.

    With ``warm_clientapp`` (the default) the SuperNode runs under ``federated.clientapp_runner``
    in Flower's ``process`` isolation mode: each message still gets its own ClientApp process,
    but forked from one that has already imported torch and pacsmesh. With ``poll_interval``
    (seconds) the SuperNode is ``federated.supernode_main``, which waits at most that long between
    pulls instead of Flower's 3 s; ``None`` runs the stock ``flower-supernode``.
    """
    node_config: dict[str, str | int | float | bool] = {
        "site-id": site_id,
        "data-source": data_source,
        "state-dir": str(state_dir),
        "torch-threads": torch_threads,
    }
    if labels is not None:
        node_config["labels"] = str(labels)
    if token_file is not None:
        node_config["token-file"] = str(token_file)
    argv = [
        _bin("flower-supernode"),
        "--superlink", superlink,
        "--root-certificates", str(ca_cert),
        "--auth-supernode-private-key", str(private_key),
        "--clientappio-api-address", clientappio_address,
        "--node-config", node_config_arg(node_config),
    ]  # fmt: skip
    if max_wait_time is not None:
        argv += ["--max-wait-time", str(max_wait_time)]
    if poll_interval is not None:
        argv[:1] = [
            sys.executable, "-m", "federated.supernode_main",
            "--poll-interval", str(poll_interval), "--",
        ]  # fmt: skip
    if not warm_clientapp:
        return argv
    return [
        sys.executable, "-m", "federated.clientapp_runner",
        "--clientappio-api-address", clientappio_address,
        "--", *argv, "--isolation", "process",
    ]  # fmt: skip


def generate_node_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format for SuperNode authentication."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP384R1())
    private_path = directory / f"{name}.key"
    public_path = directory / f"{name}.pub"
    private_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private_path, public_path


def generate_dev_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and SuperLink certificate for 127.0.0.1/localhost: ca.pem, cert, key.

    For loopback drills, tests and benchmarks only; a consortium issues the SuperLink's
    certificate from its own CA.
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacsmesh test consortium CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "superlink.pem", directory / "superlink.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def write_connection(flwr_home: Path, control_address: str, ca_cert: Path) -> Path:
    """Point the ``flwr`` CLI (with ``FLWR_HOME``) at the consortium's SuperLink over TLS."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f'default = "{CONNECTION_NAME}"\n\n'
        f"[superlink.{CONNECTION_NAME}]\n"
        f'address = "{control_address}"\n'
        f'root-certificates = "{ca_cert.resolve()}"\n',
        encoding="utf-8",
    )
    return path


def _flwr(
    flwr_home: Path, args: list[str], timeout: float | None
) -> subprocess.CompletedProcess[str]:
    env = flower_env({"FLWR_HOME": str(flwr_home)})
    try:
        return subprocess.run(
            [_bin("flwr"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=flwr_home,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeploymentError(f"flwr {args[0]} did not finish within {timeout} s") from exc


def register_supernode(flwr_home: Path, public_key: Path, timeout: float = 60.0) -> None:
    """Register a site's public key with the SuperLink; only registered keys may connect."""
    done = _flwr(flwr_home, ["supernode", "register", str(public_key), CONNECTION_NAME], timeout)
    if done.returncode != 0:
        raise DeploymentError(f"registering {public_key.name} failed: {_last_line(done)}")


def list_supernodes(flwr_home: Path, timeout: float = 60.0) -> list[dict[str, object]]:
    """The SuperNodes the SuperLink knows, with their status (``online``, ``registered``...)."""
    done = _flwr(flwr_home, ["supernode", "list", CONNECTION_NAME, "--format", "json"], timeout)
    if done.returncode != 0:
        raise DeploymentError(f"listing SuperNodes failed: {_last_line(done)}")
    try:
        payload = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError as exc:
        raise DeploymentError("flwr supernode list returned no JSON") from exc
    nodes = payload.get("nodes", [])
    return [dict(n) for n in nodes] if isinstance(nodes, list) else []


def run_app(
    flwr_home: Path,
    run_config: Mapping[str, str | int | float | bool],
    stream: bool = True,
    timeout: float | None = None,
    app_dir: Path = APP_DIR,
) -> subprocess.CompletedProcess[str]:
    """Submit the pacsmesh Flower App to the SuperLink; with ``stream``, wait for its end."""
    args = ["run", str(app_dir), CONNECTION_NAME]
    if run_config:
        args += ["--run-config", _run_config_arg(run_config)]
    if stream:
        args.append("--stream")
    done = _flwr(flwr_home, args, timeout)
    if done.returncode != 0:
        raise DeploymentError(f"flwr run failed: {_last_line(done)}")
    return done


def _run_config_arg(values: Mapping[str, str | int | float | bool]) -> str:
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, int | float):
            parts.append(f"{key}={value!r}")
        else:
            # A JSON string is a valid TOML basic string (quotes and backslashes escaped).
            parts.append(f"{key}={json.dumps(str(value))}")
    return " ".join(parts)


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr or "") + (done.stdout or "")
    lines = [line.strip(" │╭╮╰╯─") for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("Using SuperLink")]
    return " ".join(lines[-6:]) if lines else f"exit code {done.returncode}"


def parse_run_config(text: str) -> dict[str, str | int | float | bool]:
    """Parse ``k1=v1 k2='v2'`` (TOML values) as ``flwr run --run-config`` does."""
    import tomllib

    if not text.strip():
        return {}
    import shlex

    values: dict[str, str | int | float | bool] = {}
    for item in shlex.split(text, posix=False):
        if "=" not in item:
            raise DeploymentError(f"run config item {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise DeploymentError(f"run config value for {key} is not TOML: {raw}") from exc
    return values
