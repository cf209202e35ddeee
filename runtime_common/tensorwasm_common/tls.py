"""TLS and mTLS on every hop: checked key pairs, server credentials that reload when their
files change, and the client credentials of internal channels.

A service serves TLS when its `tls_cert_file` and `tls_key_file` are set, and requires a
client certificate signed by `tls_client_ca_file` when that is set (mTLS). The files are
checked at start (readable, PEM, key matches the certificate, certificate valid now) so a
bad file stops the service with a message naming the setting. The gRPC server re-reads
them when their mtime, size or inode changes (checked at each new connection's handshake,
through grpc's dynamic certificate fetcher); a rotated pair that fails the same checks is
refused with a warning and the previous one kept. Kubernetes updates a mounted Secret by
swapping a symlink, which changes the inode the check sees.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

_log = logging.getLogger(__name__)


class TlsFileError(ValueError):
    """A certificate, key or CA file is missing, unreadable, malformed, expired or does not
    match; the message starts with the setting's name."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain and its private key, as PEM bytes, checked to match."""

    certificate_chain: bytes
    private_key: bytes


@dataclass(frozen=True)
class ServerTls:
    """A server's TLS files: its certificate and key, and the CA of client certificates
    (mTLS: clients must present one) or None."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None


def load_certificates(path: Path, setting: str) -> tuple[bytes, list[x509.Certificate]]:
    """The PEM bytes of `path` and its certificates, each valid now.

    Raises:
        TlsFileError: unreadable, no PEM certificate, or a certificate outside its validity.
    """
    pem = _read(path, setting)
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsFileError(f"{setting}: {path} holds no PEM certificate") from None
    now = datetime.datetime.now(datetime.UTC)
    for certificate in certificates:
        if certificate.not_valid_after_utc <= now:
            raise TlsFileError(
                f"{setting}: the certificate {certificate.subject.rfc4514_string()} in {path} "
                f"expired at {certificate.not_valid_after_utc.isoformat()}"
            )
        if certificate.not_valid_before_utc > now:
            raise TlsFileError(
                f"{setting}: the certificate {certificate.subject.rfc4514_string()} in {path} "
                f"is not valid before {certificate.not_valid_before_utc.isoformat()}"
            )
    return pem, certificates


def load_key_pair(
    cert_file: Path,
    key_file: Path,
    *,
    cert_setting: str = "tls_cert_file",
    key_setting: str = "tls_key_file",
) -> KeyPair:
    """The certificate chain in `cert_file` and the key in `key_file`, checked to match.

    Raises:
        TlsFileError: either file is unusable, or the key is not the certificate's.
    """
    chain, certificates = load_certificates(cert_file, cert_setting)
    key_pem = _read(key_file, key_setting)
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsFileError(
            f"{key_setting}: {key_file} holds no unencrypted PEM private key ({exc})"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificates[0].public_key().public_bytes(
        encoding, public
    ):
        raise TlsFileError(
            f"{key_setting}: the key in {key_file} does not match the certificate in {cert_file} "
            f"({cert_setting})"
        )
    return KeyPair(chain, key_pem)


def certificate_names(cert_file: Path) -> list[str]:
    """The DNS names and IP addresses the first certificate in `cert_file` is valid for."""
    certificate = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [
        *names.get_values_for_type(x509.DNSName),
        *map(str, names.get_values_for_type(x509.IPAddress)),
    ]


def check_server_tls(tls: ServerTls) -> None:
    """Checks every file of `tls` (the start-time check of a service).

    Raises:
        TlsFileError: naming the setting of the first unusable file.
    """
    load_key_pair(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        load_certificates(tls.client_ca_file, "tls_client_ca_file")


def _files_of(tls: ServerTls) -> list[Path]:
    return [tls.cert_file, tls.key_file, *([tls.client_ca_file] if tls.client_ca_file else [])]


def _file_stamp(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    """What tells a changed file: mtime, size and inode of each (zeros when missing)."""
    stamps = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0))
        else:
            stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(stamps)


class ReloadingServerCredentials:
    """grpc server credentials over `tls` whose key pair and client CA are re-read when
    the files change (at the next handshake)."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp = _file_stamp(_files_of(self._tls))
        self._configuration = self._load()
        self.reloads = 0

    def credentials(self) -> grpc.ServerCredentials:
        """The credentials to pass to `add_secure_port`."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration,
            self._fetch,  # type: ignore[arg-type]  # grpc takes None: keep the current one
            require_client_authentication=self._tls.client_ca_file is not None,
        )

    def _load(self) -> grpc.ServerCertificateConfiguration:
        pair = load_key_pair(self._tls.cert_file, self._tls.key_file)
        roots = None
        if self._tls.client_ca_file is not None:
            roots, _ = load_certificates(self._tls.client_ca_file, "tls_client_ca_file")
        return grpc.ssl_server_certificate_configuration(
            [(pair.private_key, pair.certificate_chain)], root_certificates=roots
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's fetcher: a new configuration when the files changed, else None (keep)."""
        with self._lock:
            stamp = _file_stamp(_files_of(self._tls))
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                configuration = self._load()
            except TlsFileError as exc:
                # Mid-rotation (key written before the certificate) or a bad file: keep
                # serving with the pair that works; the next change is tried again.
                _log.warning(
                    "TLS files changed but are unusable; keeping the previous ones: %s", exc
                )
                return None
            self.reloads += 1
            _log.info("TLS certificates reloaded", extra={"cert_file": str(self._tls.cert_file)})
            return configuration


@dataclass(frozen=True)
class ClientTls:
    """How an internal client connects: the CA its peers' certificates are checked against
    and, for mTLS, the client certificate it presents."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """grpc channel credentials (files read now)."""
        roots = self.ca_file.read_bytes()
        if self.cert_file is None or self.key_file is None:
            return grpc.ssl_channel_credentials(root_certificates=roots)
        return grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=self.key_file.read_bytes(),
            certificate_chain=self.cert_file.read_bytes(),
        )


class ReloadingSslContext:
    """An `ssl.SSLContext` for an HTTPS server over `tls` that switches each new handshake
    to a context built from the current files once they change (through the SNI callback,
    which runs at every ClientHello)."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp = _file_stamp(_files_of(tls))
        self.context = self._build()
        self._current = self.context
        self.context.sni_callback = self._on_hello

    def _build(self) -> ssl.SSLContext:
        load_key_pair(self._tls.cert_file, self._tls.key_file)  # the same checks as at start
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._tls.cert_file, self._tls.key_file)
        if self._tls.client_ca_file is not None:
            load_certificates(self._tls.client_ca_file, "tls_client_ca_file")
            context.load_verify_locations(cafile=self._tls.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _on_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        with self._lock:
            stamp = _file_stamp(_files_of(self._tls))
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._current = self._build()
                    _log.info("HTTPS certificates reloaded")
                except (TlsFileError, ssl.SSLError) as exc:
                    _log.warning(
                        "TLS files changed but are unusable; keeping the previous ones: %s", exc
                    )
            current = self._current
        if current is not self.context:
            connection.context = current
