"""Test TLS: private certificate authorities (trustme) for upstreams on loopback.

A `PrivateCA` issues server certificates for 127.0.0.1 / localhost and saves its own
certificate as PEM, which an upstream's `tls_ca_file` points at so relayd trusts it. A
second PrivateCA is the "untrusted CA" of certificate tests.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class PrivateCA:
    def __init__(self, name: str = "relayd test CA") -> None:
        self.name = name
        self.ca = trustme.CA(organization_name=name)

    def save(self, directory: Path) -> Path:
        """Write the CA certificate (PEM) into `directory`; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name.replace(' ', '-')}.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A server context with a certificate for `names` (default: loopback) from this CA."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*(names or LOOPBACK_NAMES)).configure_cert(context)
        return context

    def save_server_files(self, directory: Path, *names: str) -> tuple[Path, Path]:
        """A certificate (with chain) and its key for `names` as PEM files: (cert, key)."""
        directory.mkdir(parents=True, exist_ok=True)
        issued = self.ca.issue_cert(*(names or LOOPBACK_NAMES))
        cert, key = directory / "server-cert.pem", directory / "server-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (and only it)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context
