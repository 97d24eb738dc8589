"""Identities: Ed25519 keys, what a peer signs to prove its key, NS tickets, token hashing.

Sans-I/O: keys are made and kept on disk by the roles (``runtime/keys.py``); this module only
builds the bytes that are signed and checks signatures.

Proof of possession: the accepting side sends a fresh random nonce; the connecting side signs
``CONTEXT | server id | nonce | role | identity | public key``. The server id binds the
signature to one server and the nonce to one connection, so it cannot be replayed elsewhere.

Tickets: the NS vouches for an agent to its TS by signing ``(agent, agent key, TS name,
expiry)``. The TS checks the NS's signature and then the agent's proof of that key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CONTEXT = b"taskfleet-proof-v1"
TICKET_CONTEXT = b"taskfleet-ticket-v1"
NONCE_BYTES = 32
PUBLIC_KEY_BYTES = 32


def proof_payload(
    server_id: str, nonce: bytes, role: str, identity: str, public_key: bytes
) -> bytes:
    """The bytes a connecting peer signs to prove it holds ``public_key``'s private key."""
    parts = [CONTEXT, server_id.encode(), nonce, role.encode(), identity.encode(), public_key]
    return b"|".join(len(p).to_bytes(4, "big") + p for p in parts)


def verify(public_key: bytes, signature: bytes, payload: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s Ed25519 signature of ``payload``."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def sign(private_key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Sign ``payload`` (for roles that hold a key)."""
    return private_key.sign(payload)


def fingerprint(public_key: bytes) -> str:
    """Short, stable name of a key for people: ``SHA256:`` and 32 hex digits."""
    return "SHA256:" + hashlib.sha256(public_key).hexdigest()[:32]


def ticket_payload(ticket: dict[str, Any]) -> bytes:
    """The bytes the NS signs for a ticket (canonical JSON)."""
    return (
        TICKET_CONTEXT + b"|" + json.dumps(ticket, sort_keys=True, separators=(",", ":")).encode()
    )


def hash_token(token: str) -> str:
    """Tokens (admin, enrolment) are random and long; they are stored as their SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()
