"""The Task Server: a relay between the Notification Server and agents.

``relay.Relay`` is the heart (held work, fan-out, batched roll-up); the NS runs the
same class as its built-in task service. Its roll-up to the NS (batches, the agents' acks) is
the mixin ``rollup.Rollup``. ``service`` adds the NS link and the listener.
"""
