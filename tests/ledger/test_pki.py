"""The consortium CA: encrypted key, node certificates only from sound CSRs."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger.deploy import fingerprint_bytes
from ledger.pki import (
    PkiError,
    create_ca,
    fingerprint,
    fingerprint_hex,
    load_ca,
    make_csr,
    new_key,
    sign_csr,
)

PASSPHRASE = b"correct horse battery staple"


def test_ca_is_a_constrained_ca_with_an_encrypted_key(tmp_path: Path) -> None:
    ca = create_ca(tmp_path, PASSPHRASE, days=30)
    key_file = tmp_path / "ca.key"
    assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with pytest.raises(TypeError):  # unusable without the passphrase
        serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    lifetime = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=31)
    assert load_ca(tmp_path, PASSPHRASE).cert == ca.cert
    with pytest.raises(PkiError, match="wrong passphrase"):
        load_ca(tmp_path, b"not the passphrase at all")
    with pytest.raises(PkiError, match="refusing to overwrite"):
        create_ca(tmp_path, PASSPHRASE)
    with pytest.raises(PkiError, match="at least"):
        create_ca(tmp_path / "weak", b"short")


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_node_certificate_is_a_short_lived_tls_server_and_client_leaf(
    tmp_path: Path, kind: str
) -> None:
    ca = create_ca(tmp_path, PASSPHRASE, key_kind=kind)
    csr = make_csr(new_key(kind), "node-b.example", ["node-b.example"], ["127.0.0.1"])
    cert = sign_csr(ca, csr, days=365, dns=["alias.example"])
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-b.example"
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ekus == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-b.example", "alias.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=366)
    # The registry stores SHA-256 over the DER; the CLI's hex form reads back the same bytes.
    assert fingerprint(cert) == cert.fingerprint(hashes.SHA256())
    assert fingerprint_bytes(fingerprint_hex(cert)) == fingerprint(cert)


def test_csr_with_a_broken_signature_is_refused(tmp_path: Path) -> None:
    ca = create_ca(tmp_path, PASSPHRASE)
    der = bytearray(
        make_csr(new_key(), "n", [], ["127.0.0.1"]).public_bytes(serialization.Encoding.DER)
    )
    der[-3] ^= 0x55  # inside the signature value
    tampered = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(PkiError, match="signature does not verify"):
        sign_csr(ca, tampered)


def test_csr_asking_for_a_ca_certificate_is_refused(tmp_path: Path) -> None:
    ca = create_ca(tmp_path, PASSPHRASE)
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sneaky")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("sneaky.example")]), False)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PkiError, match="CA certificate"):
        sign_csr(ca, csr)


def test_csr_without_any_name_is_refused(tmp_path: Path) -> None:
    ca = create_ca(tmp_path, PASSPHRASE)
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nameless")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PkiError, match="subject alternative name"):
        sign_csr(ca, csr)
