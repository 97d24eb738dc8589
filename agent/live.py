"""Live output: what a running script prints, sent on while it runs (docs/protocol.md, "Live
output"), so that `taskfleet watch ID --output` can follow a long script.

One :class:`LiveOutput` per running script (an instance, or a step of a client job). It costs
nothing until the script prints, and a script that ends within ``FIRST_AFTER_S`` sends nothing
extra: its output goes with its result, as it always did. After that, at most one piece per
``EVERY_S`` (and one last piece when the script ends), each at most ``LIVE_TEXT_BYTES``: when more
was printed in the interval, the newest part goes, with how many bytes before it were skipped.

A piece is a ``running`` report with ``live`` set, written at once if the connection can take it
(``Link.send_now``) and otherwise dropped: it is never stored, never waits in the outbox, and
never queues in front of a result. The result still carries the whole output (up to the task's
output limit), exactly as without live output.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import Callable

from protocol import codec
from protocol.messages import LIVE_TEXT_BYTES, Live, Report, Reports
from protocol.states import InstanceState
from runtime.link import Link

FIRST_AFTER_S = 1.0
"""A script's first piece goes no sooner than this after it started (a quick script sends none)."""
EVERY_S = 1.0
"""At most one piece per script in this long (the last piece, at the script's end, excepted)."""

_CONTINUATION = 0xC0, 0x80
"""A UTF-8 continuation byte: ``byte & 0xC0 == 0x80``."""


def send_live(link: Link | None, report: Report) -> bool:
    """Write one piece of live output now, or drop it (no connection, or one that cannot take it
    without waiting): live output is never kept for later. True when it was written."""
    if link is None:
        return False
    return link.send_now(codec.encode(Reports(id=link.next_id(), items=[report])))


class LiveOutput:
    """The live output of one running script: ``feed`` takes what it prints, ``close`` ends it.

    ``send`` is called with each piece (a report), from the event loop's timer."""

    def __init__(
        self,
        send: Callable[[Report], object],
        instance_id: int,
        step: str = "",
        *,
        first_after_s: float = FIRST_AFTER_S,
        every_s: float = EVERY_S,
    ):
        self._loop = asyncio.get_running_loop()
        self._first_after_s = first_after_s
        self._every_s = every_s
        self._send = send
        self._instance_id = instance_id
        self._step = step
        self._started = self._loop.time()
        self._next = self._started + first_after_s
        """The earliest time the next piece may go."""
        self._buf = bytearray()
        """The newest output not sent yet, at most ``LIVE_TEXT_BYTES``."""
        self._skipped = 0
        """Bytes printed since the last piece that fell out of ``_buf`` unsent."""
        self._timer: asyncio.TimerHandle | None = None
        self._decoder: codecs.IncrementalDecoder | None = None
        """Made at the first piece: most scripts print nothing worth a piece."""
        self._closed = False
        self.pieces = 0
        """Pieces handed to ``send`` so far."""

    def feed(self, data: bytes) -> None:
        """Take output as the script prints it (plain code: called from the output reader)."""
        if self._closed:
            return
        buf = self._buf
        buf += data
        over = len(buf) - LIVE_TEXT_BYTES
        if over > 0:
            del buf[:over]
            self._skipped += over
        if self._timer is None:
            self._timer = self._loop.call_at(self._next, self._due)

    def close(self) -> None:
        """The script ended: send what it printed since the last piece, if pieces went out or
        were due already; a script that ended sooner sends nothing (its result has it all)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop.time() >= self._started + self._first_after_s:
            self._flush(final=True)

    def _due(self) -> None:
        self._timer = None
        self._flush(final=False)
        self._next = self._loop.time() + self._every_s

    def _flush(self, *, final: bool) -> None:
        data, skipped = bytes(self._buf), self._skipped
        self._buf.clear()
        self._skipped = 0
        if self._decoder is None:
            self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        if skipped:
            # The cut may fall inside a character: start at the next whole one.
            self._decoder.reset()
            cut = 0
            while cut < min(3, len(data)) and data[cut] & _CONTINUATION[0] == _CONTINUATION[1]:
                cut += 1
            data, skipped = data[cut:], skipped + cut
        # An incomplete character at the end waits for the rest (unless this is the last piece).
        text = self._decoder.decode(data, final)
        over = len(text) - LIVE_TEXT_BYTES  # characters held from the last piece may add up to 3
        if over > 0:
            skipped += len(text[:over].encode())
            text = text[over:]
        if not text and not skipped:
            return
        self.pieces += 1
        self._send(
            Report(
                instance_id=self._instance_id,
                state=InstanceState.RUNNING,
                step=self._step,
                live=Live(text=text, skipped=skipped, at=time.time()),
            )
        )
