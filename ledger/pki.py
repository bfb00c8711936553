"""The consortium PKI: the CA, node keys and CSRs, certificate issuance, fingerprints.

Node-to-node TLS trusts one consortium CA, and a peer is accepted only while the SHA-256
fingerprint of its certificate (the DER bytes, as the ConsortiumRegistry stores it in
`tlsFingerprint`, bytes32) is registered to an active member. The CA key is encrypted at rest
under a passphrase the operator supplies; passphrases are never logged or echoed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger.errors import ConfigurationError

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
DEFAULT_CA_DAYS = 3650
DEFAULT_NODE_DAYS = 365
MIN_PASSPHRASE = 12

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class PkiError(ConfigurationError):
    """A certificate, CSR or key that cannot be used (bad signature, wrong passphrase, ...)."""


@dataclass(frozen=True)
class CertificateAuthority:
    """The consortium CA: its certificate and (decrypted, in memory only) key."""

    cert: x509.Certificate
    key: PrivateKey


def new_key(kind: str = "ec") -> PrivateKey:
    """A fresh key: EC P-256 (default) or RSA-3072."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise PkiError(f"unknown key type {kind!r}: use ec or rsa")


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 over the certificate's DER: the 32 bytes the registry stores."""
    return cert.fingerprint(hashes.SHA256())


def fingerprint_hex(cert: x509.Certificate) -> str:
    """The fingerprint as lowercase hex, the form `Member.tls_fingerprint` reads back."""
    return fingerprint(cert).hex()


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, never world-readable even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(
    out_dir: Path,
    passphrase: bytes,
    name: str = "pacsmesh consortium CA",
    days: int = DEFAULT_CA_DAYS,
    key_kind: str = "ec",
) -> CertificateAuthority:
    """Create the consortium CA in out_dir (ca.key encrypted, ca.crt); refuses to overwrite."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise PkiError(f"the CA passphrase must have at least {MIN_PASSPHRASE} characters")
    out_dir = Path(out_dir)
    if (out_dir / CA_KEY_FILE).exists() or (out_dir / CA_CERT_FILE).exists():
        raise PkiError(f"{out_dir} already holds a CA; refusing to overwrite it")
    key = new_key(key_kind)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pacsmesh consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        # RFC 5280 §4.2.1.9: a CA that issues only end-entity node certificates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_private(
        out_dir / CA_KEY_FILE,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        ),
    )
    (out_dir / CA_CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(cert, key)


def load_ca_cert(path: Path) -> x509.Certificate:
    """The CA certificate from a PEM file, or from ca.crt in a CA directory."""
    path = Path(path)
    if path.is_dir():
        path = path / CA_CERT_FILE
    return load_cert(path)


def load_ca(ca_dir: Path, passphrase: bytes) -> CertificateAuthority:
    """Open the CA for signing (decrypts its key)."""
    cert = load_ca_cert(ca_dir)
    try:
        raw = (Path(ca_dir) / CA_KEY_FILE).read_bytes()
    except OSError:
        raise PkiError(f"no CA key in {ca_dir}") from None
    try:
        key = serialization.load_pem_private_key(raw, password=passphrase)
    except (ValueError, TypeError):
        raise PkiError("cannot decrypt the CA key: wrong passphrase or damaged file") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError("the CA key is neither EC nor RSA")
    return CertificateAuthority(cert, key)


def load_cert(path: Path) -> x509.Certificate:
    """A PEM certificate from a file, with a clear error when it is not one."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError:
        raise PkiError(f"cannot read certificate {path}") from None
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate") from None


def write_private_key(path: Path, key: PrivateKey) -> None:
    """A node key, unencrypted (the server loads it unattended) but mode 0600."""
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def load_private_key(path: Path) -> PrivateKey:
    """An unencrypted PEM private key (a node's TLS key)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError:
        raise PkiError(f"cannot read key {path}") from None
    except (ValueError, TypeError):
        raise PkiError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{path} is neither an EC nor an RSA key")
    return key


def _general_names(dns: list[str], ips: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"{ip!r} is not an IP address") from None
    return names


def make_csr(
    key: PrivateKey, common_name: str, dns: list[str], ips: list[str]
) -> x509.CertificateSigningRequest:
    """A CSR naming the node and the host names/addresses its endpoint answers on."""
    names = _general_names(dns, ips)
    if not names:
        raise PkiError("a node CSR needs at least one DNS name or IP address")
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A PEM CSR, with a clear error when it is not one."""
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise PkiError("not a PEM certificate signing request") from None


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    days: int = DEFAULT_NODE_DAYS,
    dns: list[str] | None = None,
    ips: list[str] | None = None,
) -> x509.Certificate:
    """Issue a node certificate (TLS server and client) for a CSR whose signature verifies."""
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:
        valid = False
    if not valid:
        raise PkiError("the CSR signature does not verify; refusing to sign")
    try:
        requested = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        requested = None
    if requested is not None and requested.ca:
        raise PkiError("the CSR asks for a CA certificate; node certificates are never CAs")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise PkiError("the CSR key is neither EC nor RSA")
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
        raise PkiError("the CSR's RSA key is shorter than 2048 bits")
    names: list[x509.GeneralName] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        names = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    names += [n for n in _general_names(dns or [], ips or []) if n not in names]
    if not names:
        raise PkiError("no subject alternative name: give --dns or --ip, or put them in the CSR")
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca.cert.not_valid_after_utc)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM bytes of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)
