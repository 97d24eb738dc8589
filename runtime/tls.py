"""TLS for every listener: self-made certificates on first start, pinning by fingerprint.

A server with no ``--tls-cert`` makes, in its data folder, a small CA and a server certificate
signed by it (for 127.0.0.1, ::1, localhost and the host's name). Clients either trust the CA
file (``--ca``) or pin the server certificate's fingerprint (``--server-fingerprint``), which
is what the server prints at start. Plain ``ws://`` needs an explicit ``--insecure``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import ipaddress
import os
import re
import socket
import ssl
from typing import TYPE_CHECKING, Any

from runtime.keys import write_private
from runtime.tlsio import harden

if TYPE_CHECKING:
    from cryptography import x509

# ``cryptography.x509`` is imported where a certificate is made, not here: every admin command
# imports this module for its pin check, and x509 is a fifth of such a command's start.
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


def cert_fingerprint(der: bytes) -> str:
    """``SHA256:`` and the hex digest of a certificate's DER form."""
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def file_fingerprint(cert_path: str) -> str:
    """The fingerprint of the first certificate in a PEM file; ValueError if it holds none."""
    with open(cert_path, "rb") as fh:
        found = _PEM_CERT.search(fh.read())
    if found is None:
        raise ValueError(f"{cert_path} holds no PEM certificate")
    der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    return cert_fingerprint(der)


def _name(common: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def ensure_certificates(folder: str, common_name: str) -> tuple[str, str, str]:
    """Make (once) a CA and a server certificate in ``folder``; return (cert, key, ca) paths."""
    ca_path = os.path.join(folder, "ca.pem")
    cert_path = os.path.join(folder, "server.pem")
    key_path = os.path.join(folder, "server.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path, ca_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    os.makedirs(folder, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"taskfleet CA for {common_name}"))
        .issuer_name(_name(f"taskfleet CA for {common_name}"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(socket.gethostname()),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(ca_path, "wb") as fh:
        fh.write(ca.public_bytes(pem))
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(pem))
    write_private(
        key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_private(
        os.path.join(folder, "ca.key"),
        ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return cert_path, key_path, ca_path


def server_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    # No TLS 1.3 session tickets: our clients never resume a session (each connect is a new
    # handshake with a key proof), so the two tickets OpenSSL makes and sends after every
    # handshake would be CPU and bytes for nothing, 10,000 times in a registration burst.
    ctx.num_tickets = 0
    return harden(ctx)


class ClientTrust:
    """How a client trusts a server: a CA file, a pinned fingerprint, or (``insecure``) plain ws."""

    def __init__(
        self, *, ca_file: str | None = None, fingerprint: str | None = None, insecure: bool = False
    ):
        self.ca_file = ca_file
        self.fingerprint = normalise(fingerprint) if fingerprint else None
        self.insecure = insecure
        self._ctx: ssl.SSLContext | None = None

    def context(self, url: str) -> ssl.SSLContext | None:
        """The client TLS context for ``url`` (made once per trust: making one costs about a
        millisecond, a reconnect storm makes thousands)."""
        if not url.startswith("wss://"):
            return None
        if not self.ca_file:
            return _pinning_context()
        if self._ctx is None:
            self._ctx = harden(ssl.create_default_context(cafile=self.ca_file))
        return self._ctx

    def check(self, url: str, transport: Any) -> str | None:
        """Return a reason to refuse this server, or None when it is trusted. Raises
        ConnectionResetError when the server already closed the connection (as the handshake
        ended): a lost connection, to try again, not a server to distrust."""
        if not url.startswith("wss://"):
            return None if self.insecure else f"{url} is plain ws://: pass --insecure to allow it"
        if self.ca_file:
            return None
        if self.fingerprint is None:
            return "no way to trust the server: pass --server-fingerprint or --ca"
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        try:
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        except (AttributeError, ValueError, OSError) as exc:
            # The transport closed its TLS socket already (``_sslobj`` is None then).
            raise ConnectionResetError(
                f"{url} closed the connection right after the TLS handshake"
            ) from exc
        if not der:
            return "the server presented no certificate"
        seen = cert_fingerprint(der)
        if seen != self.fingerprint:
            return f"server certificate fingerprint {seen} does not match the pinned {self.fingerprint}"
        return None


@functools.cache
def _pinning_context() -> ssl.SSLContext:
    """One context for every pinned connection: they differ only in the fingerprint, which is
    checked after the handshake (``ClientTrust.check``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return harden(ctx)


def normalise(fp: str) -> str:
    """Accept ``SHA256:ab12..``, ``ab:12:..`` or bare hex; return ``SHA256:<lower hex>``."""
    text = fp.strip()
    if text.upper().startswith("SHA256:"):
        text = text[7:]
    return "SHA256:" + text.replace(":", "").lower()
