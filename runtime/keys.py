"""Key pairs on disk: made on first start, kept in the data folder with mode 0600."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def write_private(path: str, data: bytes) -> None:
    """Write a secret file that only its owner can read (created 0600, never widened)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_or_create(path: str) -> Ed25519PrivateKey:
    """The Ed25519 key at ``path``, made on first use."""
    if os.path.exists(path):
        with open(path, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise RuntimeError(
                f"{path} does not hold an Ed25519 key; move it away to make a new one"
            )
        return key
    key = Ed25519PrivateKey.generate()
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return key


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key that goes in ``hello``."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
