"""Operators' console benchmark: how late a verdict's card shows on the page, and what an
open console costs the agent's inferences (issue: operators' console).

A real mosquitto, one agent serving MQTT and HTTP, and Debian's chromium (headless, driven
by Playwright) on the console at ``GET /ui/``, all on this machine.

- Verdict → card: infers sent over MQTT at a steady pace. For each, the moment its reply
  reached the MQTT client and the moment its card (``#verdicts li[data-seq]``) was put in
  the page. The card's delay beyond the agent's answer is card − reply (the target:
  ≤ 250 ms at p95, "over the inference"); card − send − the reply's ``inference_ms`` is
  given too, and when the card's image had loaded and the next frame after the card.
- Console cost: sequential infers with no console open, then with one open (and in a full
  run three), interleaved in rounds so that drift of the machine hits every case alike;
  p95 of the reply's ``inference_ms`` and of the client's round trip, as ratios to none
  (target ≤ 1.05×), and the CPU time the browser spent per verdict against the agent's
  per infer (steadier than a p95 when other work loads the machine).

The card carries the verdict event's ``seq`` and no request id, so the bench maps seq to
request id from the agent's own event bus (a listener in this process).

Synthetic discs, random weights, torch fp32 (no runtime trial: the console's cost is what
is measured, not the runtime's); input 448 px (the default) in a full run, 224 with
``--quick``. The browser and the agent share this machine's cores: the worst case, where a
console is opened on the line PC itself.

    python -m tests.bench.run_all --only console [--quick]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.adapters.mqtt_support import Broker, Client, wait_connected
from tests.bench._agent_setup import bench_agent, infer_payload, test_pngs
from tests.bench._compare import emit_met, ratio
from tests.bench._measure import median, percentile
from tests.bench._report import emit, log

TOPIC = "bdi/bench/cmd/infer"
TARGET_CARD_P95_MS = 250.0
TARGET_INFER_P95_RATIO = 1.05
DEFAULT_INPUT = 448  # Settings.input_size's default

# Installed in the page before the measured infers: when each card (an ``li`` with the
# verdict's seq) is first put in the list, the next frame after it, and when its image has
# loaded. Only a seq's first card counts (a card put back in the list is not new).
# performance.timeOrigin + performance.now() is wall-clock epoch ms, as time.time() is in
# this process; browser and bench run on the same machine, so the two compare (the bench
# checks the offset between them and reports it).
OBSERVE = """() => {
  const cards = {};
  window.__benchCards = cards;
  const now = () => performance.timeOrigin + performance.now();
  const list = document.getElementById("verdicts");
  new MutationObserver((records) => {
    const t = now();
    for (const record of records) {
      for (const node of record.addedNodes) {
        const seq = node.dataset && node.dataset.seq;
        if (!seq || cards[seq]) continue;
        const card = (cards[seq] = { inserted: t, frame: null, image: null });
        requestAnimationFrame(() => { card.frame = now(); });
      }
    }
  }).observe(list, { childList: true });
  list.addEventListener("load", (e) => {
    const item = e.target.closest && e.target.closest("li[data-seq]");
    const card = item && cards[item.dataset.seq];
    if (card && card.image === null) card.image = now();
  }, true);
}"""


class StampedClient(Client):
    """The test client, also noting when each reply arrived (epoch seconds)."""

    def __init__(self, port: int) -> None:
        self.arrived: dict[str, float] = {}
        super().__init__(port, client_id="bench-console", subscribe=("bdi/bench/result/#",))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        stamp = time.time()
        super()._on_message(client, userdata, msg)
        # Only paho's network thread appends, and it is this one: the last is this message.
        _topic, body, _ = self.messages[-1]
        if isinstance(body, dict) and body.get("request_id"):
            self.arrived.setdefault(body["request_id"], stamp)


def main(quick: bool = False) -> None:
    from playwright.sync_api import sync_playwright

    size = 224 if quick else DEFAULT_INPUT
    cards = 20 if quick else 100
    # Short phases, many rounds: the load of a shared machine drifts within minutes.
    per_phase, rounds = (8, 2) if quick else (12, 4)
    work = Path(tempfile.mkdtemp(prefix="bdi-bench-console-"))
    broker = Broker(work / "broker")
    broker.start()
    agent, root = bench_agent(
        size=size,
        n_fit=4 if quick else 10,
        agent_id="bench",
        runtime="torch",
        precision="fp32",
        mqtt={"enabled": True, "port": broker.port},
        http={"enabled": True, "port": 0},
    )
    seq_to_request: dict[int, str] = {}

    def note(event: Any) -> None:
        if event.name == "verdict":
            seq_to_request[event.seq] = event.body.get("request_id")

    agent.bus.events.subscribe(note)
    from adapters.http.adapter import create as create_http
    from adapters.mqtt.adapter import create as create_mqtt

    http, mqtt = create_http(agent.settings, agent), create_mqtt(agent.settings, agent)
    http.start()
    mqtt.start()
    plc = StampedClient(broker.port)
    pngs = test_pngs(6, size=size)
    try:
        wait_connected(agent, timeout=30)
        warm = [_infer(plc, pngs[i % len(pngs)])[0] for i in range(6)][2:]
        # The line's cycle: half as long again as the slowest warm infer.
        period = max(0.25, 1.5 * max(warm) / 1000)
        log(f"console: input {size} px, warm round trip {median(warm):.0f} ms")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
            try:
                _bench_cards(browser, http.url, plc, pngs, cards, period, seq_to_request, size)
                _bench_cost(browser, http.url, plc, pngs, per_phase, rounds, quick, size)
            finally:
                browser.close()
    finally:
        plc.close()
        mqtt.stop()
        http.stop()
        agent.stop()
        broker.stop()
        for folder in (work, root):
            shutil.rmtree(folder, ignore_errors=True)


def _chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        raise RuntimeError("chromium is not installed: `make bench` installs it (apt-get)")
    return path


def _infer(plc: StampedClient, png: bytes) -> tuple[float, float]:
    """One infer over MQTT, waited for: (round trip ms, the reply's inference_ms)."""
    request_id = str(uuid.uuid4())
    start = time.perf_counter()
    plc.publish(TOPIC, infer_payload(png, request_id=request_id))
    reply = plc.reply(request_id, timeout=120)
    elapsed = (time.perf_counter() - start) * 1000
    assert reply.get("ok"), reply
    return elapsed, float(reply["inference_ms"])


@contextmanager
def _consoles(browser: Any, url: str, count: int) -> Iterator[list[Any]]:
    """``count`` consoles open and live, each in its own browser context (own tab)."""
    contexts = [browser.new_context(viewport={"width": 1280, "height": 800}) for _ in range(count)]
    pages = []
    try:
        for context in contexts:
            page = context.new_page()
            page.goto(f"{url}/ui/")
            page.wait_for_selector('#live[data-state="live"]', timeout=30_000)
            pages.append(page)
        time.sleep(1.0)  # the snapshot's pictures and first /stats poll are done
        yield pages
    finally:
        for context in contexts:
            context.close()


def _clock_offset_ms(page: Any) -> tuple[float, float]:
    """The page's clock minus this process's (ms), and the bound on that reading."""
    best: tuple[float, float] | None = None
    for _ in range(5):
        before = time.time() * 1000
        page_ms = page.evaluate("() => performance.timeOrigin + performance.now()")
        after = time.time() * 1000
        reading = (page_ms - (before + after) / 2, (after - before) / 2)
        if best is None or reading[1] < best[1]:
            best = reading
    assert best is not None
    return best


def _bench_cards(
    browser: Any,
    url: str,
    plc: StampedClient,
    pngs: list[bytes],
    n: int,
    period: float,
    seq_to_request: dict[int, str],
    size: int,
) -> None:
    with _consoles(browser, url, 1) as (page,):
        page.evaluate(OBSERVE)
        offset, bound = _clock_offset_ms(page)
        sent: dict[str, float] = {}
        ids = [str(uuid.uuid4()) for _ in range(n)]
        log(f"console: {n} infers over MQTT, one every {period * 1000:.0f} ms")
        start = time.monotonic()
        for i, request_id in enumerate(ids):
            # A steady pace, as a line's cycle, never waiting for the console. A line's cycle
            # leaves the agent slack: when an infer overruns its tick (the machine is loaded),
            # the next is sent on its reply, so no queue builds up and the figures stay those
            # of an agent that keeps pace.
            if i:
                plc.reply(ids[i - 1], timeout=300)
            delay = start + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[request_id] = time.time()
            plc.publish(TOPIC, infer_payload(pngs[i % len(pngs)], request_id=request_id))
        replies = {r: plc.reply(r, timeout=300) for r in ids}
        late = sum(sent[b] - sent[a] > period + 0.05 for a, b in pairwise(ids))
        wanted = set(ids)
        seen: dict[str, dict[str, float | None]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = page.evaluate("() => window.__benchCards")
            shown = {seq_to_request.get(int(s)) for s in seen}
            done = all(c["frame"] is not None and c["image"] is not None for c in seen.values())
            if wanted <= shown and done:
                break
            time.sleep(0.2)
        offset_after, _ = _clock_offset_ms(page)
    by_request = {seq_to_request.get(int(s)): c for s, c in seen.items()}
    over_reply: list[float] = []
    over_inference: list[float] = []
    to_frame: list[float] = []
    to_image: list[float] = []
    for request_id in ids:
        card = by_request.get(request_id)
        if card is None:
            continue
        reply_ms = plc.arrived[request_id] * 1000
        over_reply.append(card["inserted"] - reply_ms)
        over_inference.append(
            card["inserted"] - sent[request_id] * 1000 - replies[request_id]["inference_ms"]
        )
        if card["frame"] is not None:
            to_frame.append(card["frame"] - reply_ms)
        if card["image"] is not None:
            to_image.append(card["image"] - reply_ms)
    inference = [float(replies[r]["inference_ms"]) for r in ids]
    emit(
        "console.verdict_to_card",
        input_px=size,
        infers=n,
        period_ms=period * 1000,
        sent_late=late,
        cards_seen=len(over_reply),
        cards_with_image=len(to_image),
        card_minus_reply_p50_ms=_p(over_reply, 0.5),
        card_minus_reply_p95_ms=_p(over_reply, 0.95),
        card_minus_send_minus_inference_p50_ms=_p(over_inference, 0.5),
        card_minus_send_minus_inference_p95_ms=_p(over_inference, 0.95),
        next_frame_minus_reply_p95_ms=_p(to_frame, 0.95),
        image_loaded_minus_reply_p50_ms=_p(to_image, 0.5),
        image_loaded_minus_reply_p95_ms=_p(to_image, 0.95),
        inference_p50_ms=_p(inference, 0.5),
        clock_offset_ms=offset,
        clock_offset_bound_ms=bound,
        clock_offset_after_ms=offset_after,
    )
    # A card that never showed fails the target: the comparison could not be made for it.
    value = _p(over_reply, 0.95) if len(over_reply) == n else None
    emit_met(
        "console.card_over_reply_p95",
        value,
        "<=",
        TARGET_CARD_P95_MS,
        "ms",
        p50_ms=_p(over_reply, 0.5),
        missing_cards=n - len(over_reply),
        method="card put in the page (MutationObserver) minus the MQTT reply's arrival, "
        "both epoch ms on one machine",
    )


def _bench_cost(
    browser: Any,
    url: str,
    plc: StampedClient,
    pngs: list[bytes],
    per_phase: int,
    rounds: int,
    quick: bool,
    size: int,
) -> None:
    cases = (0, 1) if quick else (0, 1, 3)
    trips: dict[int, list[float]] = {c: [] for c in cases}
    infers: dict[int, list[float]] = {c: [] for c in cases}
    # Where the time goes: CPU seconds of the browser's processes and of this process (the
    # agent, its HTTP server, the MQTT client) per case.
    cpu = {c: {"browser": 0.0, "agent": 0.0} for c in cases}
    for round_no in range(rounds):
        for count in cases:
            log(f"console: round {round_no + 1}, {count} console(s) open, {per_phase} infers")
            with _consoles(browser, url, count):
                browser_before, agent_before = _browser_cpu(), time.process_time()
                for i in range(per_phase):
                    trip, inference = _infer(plc, pngs[i % len(pngs)])
                    trips[count].append(trip)
                    infers[count].append(inference)
                cpu[count]["browser"] += _browser_cpu_since(browser_before)
                cpu[count]["agent"] += time.process_time() - agent_before
    n = per_phase * rounds
    per_infer = {c: {k: v * 1000 / n for k, v in cpu[c].items()} for c in cases}
    none_infer, none_trip = _p(infers[0], 0.95), _p(trips[0], 0.95)
    for count in cases[1:]:
        label = "console" if count == 1 else f"{count}_consoles"
        emit(
            f"console.infer_with_{label}",
            input_px=size,
            infers_each=per_phase * rounds,
            inference_p50_ms={"none": _p(infers[0], 0.5), label: _p(infers[count], 0.5)},
            inference_p95_ms={"none": none_infer, label: _p(infers[count], 0.95)},
            round_trip_p95_ms={"none": none_trip, label: _p(trips[count], 0.95)},
            round_trip_p95_ratio=ratio(_p(trips[count], 0.95), none_trip),
            inference_p50_ratio=ratio(_p(infers[count], 0.5), _p(infers[0], 0.5)),
            browser_cpu_ms_per_infer={
                "none": per_infer[0]["browser"],
                label: per_infer[count]["browser"],
            },
            agent_cpu_ms_per_infer={
                "none": per_infer[0]["agent"],
                label: per_infer[count]["agent"],
            },
        )
        emit_met(
            f"console.infer_p95_ratio_{label}",
            ratio(_p(infers[count], 0.95), none_infer),
            "<=",
            TARGET_INFER_P95_RATIO,
            "x",
            method="p95 of the replies' inference_ms, open vs none, phases interleaved",
            # Less noisy than the ratio on a loaded machine: the browser's CPU per verdict
            # against the agent's per infer, which it competes with on shared cores.
            browser_cpu_share=ratio(per_infer[count]["browser"], per_infer[count]["agent"]),
        )


def _browser_cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the browser used since ``before`` (a `_browser_cpu` reading).

    Per process: a renderer of a console closed just before the reading may exit
    meanwhile, and its total must not be subtracted from the others'."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in _browser_cpu().items())


def _browser_cpu() -> dict[int, float]:
    """CPU seconds used so far by each live chromium process under this one (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        if "chrom" in name:
            used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    me = os.getpid()

    def mine(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return {pid: seconds for pid, seconds in used.items() if mine(pid)}


def _p(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None
