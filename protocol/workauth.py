"""Work authentication: what the NS vouches for in each instance it dispatches, and its check.

A Task Server relays work between the NS and its agents, but must never invent or alter it (a
rogue or compromised TS would otherwise run code as root on every agent it serves). So the NS
authenticates every target of a ``dispatch`` for the one agent that will run it:

* Each agent gets a **work key** when it registers with the NS (``welcome.config["work_key"]``,
  over the agent's own TLS connection to the NS; a TS never sees it). The NS derives it from its
  own signing key and the computer's name (:func:`agent_work_key`), so it keeps no table of
  secrets (nothing an administrator's SQL report could read) and a restored data folder gives
  the same keys.
* Per target, the NS computes a MAC with that key (keyed BLAKE2b-256) over :func:`mac_payload`: the
  instance id as on the wire, the computer's name, the run id, the digest of the task definition
  (computed once per dispatch, :func:`task_digest`; a client job's program is inside it, so its
  steps are covered too) and the target's tokens. It travels in ``Target.mac``; the relay copies
  it into ``Execute.mac``.
* The agent recomputes it (:func:`check_mac`) and runs nothing whose MAC is missing or wrong.

A MAC with a per-agent key costs a few microseconds per target, where an Ed25519 signature
per target would cost 30-50 µs (0.3-0.5 s of NS time per 10,000-computer step). It is as strong
for this purpose: only the NS and that one agent hold the key, and the agent only checks.
Keyed BLAKE2b is a MAC by design (RFC 7693, 256-bit key and tag), as strong as HMAC-SHA256 and
measured 2.5 times cheaper here (1.0 µs against 2.7 µs per target).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import msgpack

WORK_KEY_BYTES = 32
MAC_BYTES = 32
_MASTER_LABEL = b"taskfleet work authentication v1"


def master_work_key(server_secret: bytes) -> bytes:
    """The NS's master work key, derived from its private signing key's raw bytes (a separate
    purpose: the signing key itself is never used as an HMAC key)."""
    return hmac.digest(server_secret, _MASTER_LABEL, "sha256")


def agent_work_key(master: bytes, computer: str) -> bytes:
    """The work key of the agent of ``computer`` (what it gets in its ``welcome``)."""
    return hmac.digest(master, b"agent\x00" + computer.encode("utf-8", "surrogatepass"), "sha256")


def task_digest(task: dict[str, Any]) -> bytes:
    """SHA-256 of the task definition in a canonical form (keys sorted, no spaces): the same on
    the NS, after the relay's round trip through its store, and on the agent."""
    text = json.dumps(task, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).digest()


_DIGESTS: dict[bytes, bytes] = {}
"""Task digests by the task's msgpack encoding: an agent process serving many agents (``taskfleet
simulate``) gets the same task once per agent, each decoded anew; the encoding (about a fifth of
the canonical JSON's cost) finds the digest computed for the first. Equal encodings are equal
tasks, so a hit is always right; a task sent with its keys in another order only misses."""
_DIGESTS_MAX = 256


def _cached_digest(task: dict[str, Any]) -> bytes:
    packed = bytes(_PACKER.pack(task))
    digest = _DIGESTS.get(packed)
    if digest is None:
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        digest = _DIGESTS[packed] = task_digest(task)
    return digest


_PACKER = msgpack.Packer(use_bin_type=True)
"""One packer, kept: building one per call cost as much as the packing (1.7 µs a target)."""


def mac_payload(
    instance_id: int, computer: str, run_id: int, digest: bytes, tokens: dict[str, str]
) -> bytes:
    """The canonical bytes the NS authenticates for one target."""
    return bytes(
        _PACKER.pack(
            [b"taskfleet-execute", instance_id, computer, run_id, digest, sorted(tokens.items())]
        )
    )


def work_mac(
    key: bytes,
    instance_id: int,
    computer: str,
    run_id: int,
    digest: bytes,
    tokens: dict[str, str],
) -> bytes:
    """The MAC the NS puts in ``Target.mac``: keyed BLAKE2b-256 over :func:`mac_payload`."""
    payload = mac_payload(instance_id, computer, run_id, digest, tokens)
    return hashlib.blake2b(payload, key=key, digest_size=MAC_BYTES).digest()


def check_mac(
    key: bytes,
    mac: bytes,
    instance_id: int,
    computer: str,
    run_id: int,
    task: dict[str, Any],
    tokens: dict[str, str],
) -> str | None:
    """None when ``mac`` authenticates this execute for ``computer``; else why not (for the
    refusal's reason). Never raises on hostile input."""
    if not mac:
        return "it carries no authentication from the NS"
    if len(mac) != MAC_BYTES:
        return "its authentication is malformed"
    try:
        expected = work_mac(key, instance_id, computer, run_id, _cached_digest(task), tokens)
    except (TypeError, ValueError, OverflowError):
        return "its task or tokens cannot be authenticated"
    if not hmac.compare_digest(expected, mac):
        return "its authentication does not match what the NS sent (altered or invented)"
    return None
