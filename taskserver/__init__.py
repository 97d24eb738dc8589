"""The Task Server: a relay between the Notification Server and agents.

``relay.Relay`` is the heart (held work, fan-out, batched roll-up); the NS runs the
same class as its built-in task service. ``service`` adds the NS link and the listener.
"""
