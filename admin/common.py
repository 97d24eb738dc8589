"""What the ``taskfleet`` command's modules share: the exit codes (their table is in the
docstring of :mod:`admin.cli`), how a client trusts the server, the :class:`CannotStart` error of
a role and its one-line report, and JSON output. It imports nothing of :mod:`admin`'s command
modules, so :mod:`admin.cli`, :mod:`admin.roles` and :mod:`admin.runverbs` all can import it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from runtime.tls import ClientTrust

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_DATA = 4
"""A role could not start: listen address, data folder, database (the name predates the others)."""
EXIT_START = EXIT_DATA
EXIT_REFUSED = 5
EXIT_CLOSED_STDOUT = 128 + signal.SIGPIPE


def _trust(args: argparse.Namespace) -> ClientTrust:
    """How this client trusts the server: --ca, --server-fingerprint, or --insecure."""
    return ClientTrust(ca_file=args.ca, fingerprint=args.server_fingerprint, insecure=args.insecure)


def _unusable(exc: Exception) -> int:
    print(f"taskfleet: {exc}", file=sys.stderr, flush=True)
    return EXIT_DATA


class CannotStart(Exception):
    """A role cannot start (exit 4); the message says what is wrong and what to do."""


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
