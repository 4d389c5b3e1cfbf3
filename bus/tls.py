"""A site's own certificate authority, and TLS contexts that trust only it.

API keys and broker tokens cross a campus network, so the broker (``amqps://``), the auth
service and the gateway (``https://``) serve TLS with certificates from a CA the lab
makes for itself (``bus tls init``), and every client verifies the server against that CA
alone: a server certificate from any other CA is refused. Clients name the CA in the URL
(``amqps://host:5671/?cafile=/etc/idlecloud/tls/ca.pem``, which aio-pika reads) or with
``IDLECLOUD_CA_FILE`` for HTTPS.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "SiteCA",
    "TlsFiles",
    "client_context",
    "https_context",
    "server_context",
    "server_files",
    "write_private",
]

_VALID_DAYS = 825  # the longest a server certificate may live for browsers


# cryptography is imported where a key or certificate is made (40 ms of CPU): every `bus`
# process imports this module, a replica's worker too, and most never make one.


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret (a private key) readable by its owner alone: created 0600, never
    world-readable for an instant."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)


@dataclass(frozen=True)
class TlsFiles:
    """Where a server's certificate, key and the site CA's certificate are."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class SiteCA:
    """A lab's certificate authority: its certificate and private key (PEM)."""

    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def create(cls, name: str = "idlecloud site CA") -> SiteCA:
        """A new CA (ECDSA P-256), valid for ten years."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
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
        return cls(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @classmethod
    def kept_in(cls, folder: Path, name: str = "idlecloud site CA") -> SiteCA:
        """The CA saved in ``folder``, or a new one saved there.

        Raises:
            OSError: the folder cannot be read or written.
        """
        if (folder / "ca.key").is_file():
            return cls.load(folder)
        ca = cls.create(name)
        ca.save(folder)
        return ca

    @classmethod
    def load(cls, folder: Path) -> SiteCA:
        """The CA written by :meth:`save`.

        Raises:
            OSError: ``ca.pem`` or ``ca.key`` cannot be read.
        """
        return cls((folder / "ca.pem").read_bytes(), (folder / "ca.key").read_bytes())

    def save(self, folder: Path) -> Path:
        """Write ``ca.pem`` and ``ca.key`` (0600); the certificate's path."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ca.pem").write_bytes(self.cert_pem)
        write_private(folder / "ca.key", self.key_pem)
        return folder / "ca.pem"

    def issue(self, hosts: Sequence[str]) -> tuple[bytes, bytes]:
        """A server certificate for ``hosts`` (names or IP addresses) and its key (PEM).

        Raises:
            ValueError: no host was named.
        """
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or address")
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_files(self, folder: Path, name: str, hosts: Sequence[str]) -> TlsFiles:
        """Write ``<name>.pem`` and ``<name>.key`` (0600) for ``hosts``, and ``ca.pem``."""
        cert_pem, key_pem = self.issue(hosts)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.pem").write_bytes(cert_pem)
        write_private(folder / f"{name}.key", key_pem)
        (folder / "ca.pem").write_bytes(self.cert_pem)
        return TlsFiles(folder / "ca.pem", folder / f"{name}.pem", folder / f"{name}.key")


def server_files(cert_file: Path | None, key_file: Path | None) -> TlsFiles | None:
    """A server's certificate and key as ``bus tls init`` wrote them (``ca.pem`` beside
    them), or None when neither is given.

    Raises:
        ValueError: only one of the two is given.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("give both the TLS certificate and its key, or neither")
    if cert_file is None or key_file is None:
        return None
    return TlsFiles(cert_file.with_name("ca.pem"), cert_file, key_file)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server's TLS context (TLS 1.2 or later) with its certificate and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert_file, files.key_file)
    return context


def client_context(ca_file: Path) -> ssl.SSLContext:
    """A client's TLS context that trusts only the site CA and checks the host name."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def https_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The TLS context an HTTP client uses (for ``https://`` URLs; plain ``http://``, which
    only loopback services should serve, ignores it): one that trusts only ``ca_file`` or,
    without one, ``IDLECLOUD_CA_FILE``, else the system's CAs."""
    ca = ca_file or (Path(path) if (path := os.environ.get("IDLECLOUD_CA_FILE")) else None)
    return ssl.create_default_context() if ca is None else client_context(ca)
