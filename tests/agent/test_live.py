"""agent.live: what a running script prints becomes bounded pieces of live output."""

from __future__ import annotations

import asyncio

from agent.live import LiveOutput
from protocol.messages import LIVE_TEXT_BYTES, Report
from tests.helpers import until


async def test_a_script_that_ends_at_once_sends_nothing_extra():
    """Output fed and ended before the first piece is due goes with the result only."""
    sent: list[Report] = []
    live = LiveOutput(sent.append, 7)
    live.feed(b"hello\n" * 100)
    live.close()
    await asyncio.sleep(0)
    assert sent == [] and live.pieces == 0


async def test_pieces_are_bounded_and_say_what_was_skipped():
    """More than a piece can carry in one interval: the newest LIVE_TEXT_BYTES go, with how many
    bytes before them were skipped; a cut inside a character starts at the next whole one; the
    rest, when the script ends, goes as a last piece."""
    sent: list[Report] = []
    live = LiveOutput(sent.append, 7, "step-1", first_after_s=0.0, every_s=3600.0)
    big = ("é" * 5000).encode()  # 10,000 bytes, two per character
    live.feed(b"x" + big)  # the odd byte puts the cut inside a character
    await until(lambda: asyncio.sleep(0, bool(sent)), "the first piece")
    first = sent[0]
    assert first.live is not None
    assert (first.instance_id, first.step, first.state) == (7, "step-1", "running")
    assert first.live.text == "é" * (first.live.text.count("é"))
    assert len(first.live.text.encode()) <= LIVE_TEXT_BYTES
    assert first.live.skipped + len(first.live.text.encode()) == len(big) + 1
    assert first.live.skipped > 0 and first.live.at > 0
    live.feed(b"tail\n")  # the next piece is an hour away: the end sends it
    live.close()
    assert [r.live.text for r in sent[1:] if r.live] == ["tail\n"]
    assert sent[1].live is not None and sent[1].live.skipped == 0
    live.feed(b"after the end")
    await asyncio.sleep(0)
    assert len(sent) == 2 and live.pieces == 2


async def test_a_character_split_between_reads_stays_whole():
    """Output read in two pieces that cut a character in two is sent as whole characters."""
    sent: list[Report] = []
    live = LiveOutput(sent.append, 1, first_after_s=0.0, every_s=0.0)
    data = "naïve\n".encode()
    live.feed(data[:3])  # ends inside "ï"
    await until(lambda: asyncio.sleep(0, bool(sent)), "the first piece")
    live.feed(data[3:])
    await until(lambda: asyncio.sleep(0, len(sent) == 2), "the second piece")
    live.close()
    assert "".join(r.live.text for r in sent if r.live) == "naïve\n"
