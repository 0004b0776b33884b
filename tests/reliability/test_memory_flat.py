"""The agent's memory stays flat under a stream of infers with heatmaps (issue 14, item 7).

The MQTT adapter once kept the payload of each of its last 20,000 replies: the agent grew
by 12 MB over 500 infers. Here a real agent process (random weights, 56-px backbone input
for speed, 224-px crops so each reply carries a 224x224 heatmap of about 8 KB) answers a
stream of infers over a real mosquitto, each with a request id of its own.

Every bounded store is set small enough to fill during the warm-up (300 infers) (replies kept for
repeats 2 MB, the events backlog 64 KB; the recent verdicts' 50 entries fill at once), so
whatever still grows after it grows without bound. The RSS is read with nothing in flight
after the warm-up and at the end. Measured here: +0.5 MB over 2,500 infers after a warm-up
of 500; the same run with the repeat store uncapped grew 12 MB over 1,000 infers.
``BDI_MEMORY_INFERS`` lengthens the run; ``make bench`` (``--only memory``) compares 10,000
infers with 1,000 under the default settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.memory_support import StreamedAgent, crops

WARMUP = 300
INFERS = int(os.environ.get("BDI_MEMORY_INFERS", "1200"))  # after the warm-up
MAX_GROWTH_MB = 4.0
SAMPLE_EVERY = 250


@pytest.mark.timeout(900)  # no timing is judged; a loaded machine only makes it slower
@pytest.mark.reliability("load", "RSS flat over a stream of MQTT infers with heatmaps")
def test_rss_stays_flat_over_a_stream_of_infers_with_heatmaps(
    tmp_path: Path, record_property
) -> None:
    agent = StreamedAgent(
        tmp_path,
        input_size=56,
        BDI_MQTT__REPEAT_CACHE_BYTES=str(2 * 1024 * 1024),
        BDI_EVENTS_BACKLOG_BYTES=str(64 * 1024),
    )
    samples: list[tuple[int, float]] = []
    try:
        agent.start()
        agent.fit(crops(4, 224))
        pngs = crops(6, 224, seed=5)
        agent.stream(pngs, WARMUP)
        samples.append((agent.tally.answered, agent.rss_mb()))
        agent.stream(
            pngs,
            INFERS,
            every=SAMPLE_EVERY,
            progress=lambda answered: samples.append((answered, agent.rss_mb())),
        )
    finally:
        agent.stop()
    assert agent.tally.errors == 0, agent.tally.failed
    assert agent.tally.ok == WARMUP + INFERS
    growth = samples[-1][1] - samples[0][1]
    series = ", ".join(f"{n}: {rss:.1f}" for n, rss in samples)
    record_property("tried", agent.tally.ok)
    record_property("failures", 0 if growth <= MAX_GROWTH_MB else 1)
    record_property(
        "detail", f"RSS {growth:+.1f} MB over {INFERS} infers after a warm-up of {WARMUP}"
    )
    assert growth <= MAX_GROWTH_MB, (
        f"the agent's RSS grew by {growth:.1f} MB over {INFERS} infers after a warm-up of "
        f"{WARMUP} (bound {MAX_GROWTH_MB} MB): something keeps a little of every request. "
        f"RSS (MB) by replies answered: {series}"
    )
