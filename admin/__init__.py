"""The admin client and the ``taskfleet`` command line (every role's entry point)."""
