"""The asyncio runtime every role stands on: connections, TLS, framing, the handshake gate,
keepalive, keys, heap tuning, logging, SQLite opening and script running.

It depends only on ``protocol``. The NS (``server``), the Task Server (``taskserver``) and the
agent (``agent``) all build on it, so each of these exists once:

- ``link``: a msgpack-over-WebSocket connection (``Link``), ``listen``/``connect``/``accept``,
  the proof-of-key ``challenge``, the per-address ``ConnectionCap``.
- ``tlsio``, ``frames``, ``gate``, ``keepalive``: the transport under a ``Link``: TLS on raw
  sockets, the fast binary-frame path, the handshake gate, pings and the watchdog.
- ``tls``, ``keys``: certificates, trust settings and Ed25519 keys.
- ``db``: opening a SQLite file with its migrations, batched writes, outbox rows.
- ``runner``, ``jobrunner``, ``httpcall``: running a script (``ScriptRun``/``Outcome``), driving a
  client job's state machine, calling a web service.
- ``heap``, ``logs``: allocator tuning and the structlog set-up.
"""
