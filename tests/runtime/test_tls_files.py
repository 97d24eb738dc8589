"""``runtime.tls``: the fingerprint of a certificate file, read without ``cryptography``."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from runtime.tls import cert_fingerprint, ensure_certificates, file_fingerprint


def _x509_fingerprint(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def test_a_chain_files_fingerprint_is_its_first_certificates(tmp_path: Path) -> None:
    cert, _key, ca = ensure_certificates(str(tmp_path / "tls"), "ns-1")
    leaf = Path(cert).read_bytes()
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"a comment before the block\n" + leaf + Path(ca).read_bytes())
    assert file_fingerprint(cert) == _x509_fingerprint(leaf)
    assert file_fingerprint(str(chain)) == _x509_fingerprint(leaf)
    assert file_fingerprint(ca) != file_fingerprint(cert)


def test_a_file_without_a_certificate_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "key-only.pem"
    empty.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        file_fingerprint(str(empty))
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\n@@not base64@@\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError):
        file_fingerprint(str(broken))
