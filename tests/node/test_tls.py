"""A node started with a certificate serves DICOMweb over HTTPS only."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.node.conftest import free_port, start_node


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacsmesh-test-node")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "node.crt", directory / "node.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_node_answers_https_and_refuses_plain_http(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    node = start_node(
        tmp_path / "node",
        args=["--tls-cert", str(cert), "--tls-key", str(key)],
        port=port,
        wait=False,
    )
    try:
        url = f"https://127.0.0.1:{port}"
        for _ in range(300):
            try:
                r = httpx.get(f"{url}/dicom-web/studies", verify=str(cert), timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail(f"TLS node did not answer:\n{node.log()}")
        assert r.status_code == 204  # an empty archive: no studies
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).raise_for_status()
    finally:
        node.stop()
