"""``python -m admin`` is the ``taskfleet`` command (tests use it to start real processes)."""

from admin.cli import main

main()
