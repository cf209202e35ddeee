"""A local certificate authority and the certificates of a TLS stack (`tensorwasm up --tls`).

Everything is for one machine: a CA made on the spot, one certificate per service valid
for the stack's host names (usable as server and as client certificate, so the same pair
serves mTLS both ways), and a client certificate for the CLI. EC P-256 keys, files 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate file and its key (kept in memory to sign with)."""

    cert_file: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    """A certificate and key written to files."""

    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_authority(directory: Path, common_name: str = "tensorwasm local CA") -> Authority:
    """A fresh self-signed CA, its certificate written to `directory/ca.pem` (the key to
    `ca.key`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + DEFAULT_VALIDITY * 12)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "ca.pem"
    _write_private(cert_file, certificate.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / "ca.key", _key_pem(key))
    return Authority(cert_file, certificate, key)


def issue(
    authority: Authority,
    common_name: str,
    names: Iterable[str],
    directory: Path,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A certificate for `names` (host names or IP addresses) signed by `authority`, valid
    as a server and a client certificate, written to `directory/<common_name>.pem` and
    `.key`."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    alternatives: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + DEFAULT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    certificate = builder.sign(authority.key, hashes.SHA256())
    issued = Issued(directory / f"{common_name}.pem", directory / f"{common_name}.key")
    _write_private(issued.key_file, _key_pem(key))
    _write_private(issued.cert_file, certificate.public_bytes(serialization.Encoding.PEM))
    return issued


def stack_tls_env(directory: Path, services: Iterable[str], host: str) -> dict[str, str]:
    """Makes a CA, a certificate per service and one for the CLI (`client`) under
    `directory`, and returns the environment that turns on mTLS on every hop of the stack
    (the CA as every service's client CA and as the CA of its internal calls)."""
    authority = make_authority(directory)
    names = ["localhost", "127.0.0.1", "::1", host]
    env = {"TENSORWASM_TLS_CA_FILE": str(authority.cert_file)}
    for service in services:
        issued = issue(authority, service, names, directory)
        prefix = f"TENSORWASM_{service.upper()}_"
        env[prefix + "TLS_CERT_FILE"] = str(issued.cert_file)
        env[prefix + "TLS_KEY_FILE"] = str(issued.key_file)
        env[prefix + "TLS_CLIENT_CA_FILE"] = str(authority.cert_file)
    issue(authority, "client", ["localhost"], directory)
    return env
