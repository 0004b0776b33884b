"""Mixed traffic held against one agent process: the load half of the reliability suite.

One ``python -m agent run`` (MQTT, folders and HTTP on), a real mosquitto, and four
clients at once: a PLC publishing ``infer`` over MQTT at a steady rate, a camera dropping
crops into ``inbox/.../infer/``, the GUI posting ``/infer`` over HTTP, and a refit
(``/fit_ok`` with two new OK crops) every ``refit_every_s``. The offered load is
``load_fraction`` of the capacity measured just before, on the same agent.

The agent's RSS, open file descriptors and threads are read from ``/proc`` every
``sample_every_s``. The verdict (:func:`judge`): every request answered once, RSS growth
after warm-up under ``max_rss_growth_mb``, no fd or thread growth, a clean stop; and, where
the plan judges latency (the soak), p95 of the PLC's infers in the last window within
``max_p95_drift`` of the first.

Used by ``test_load.py`` (60 s, in ``make test``) and ``soak.py`` (30 min, ``make soak``).
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.demo.discs import encode_png, make_set
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.fault_support import HttpAgent

ROI = {"role_id": "Line", "roi_id": "Face"}
MM_PER_PX = 0.2
SIZE = 224
AGENT_ID = "soak"


@dataclass(frozen=True)
class LoadPlan:
    duration_s: float
    refit_every_s: float
    # The PLC's p95 over [first_window_s, first_window_s + window_s] against the last
    # window_s: both windows hold as many refits (none in the 60 s run, where one refit
    # would outweigh everything else; two in the soak's 5-minute windows).
    first_window_s: float
    window_s: float
    # Resources are compared with their first sample from here on, once the first refit
    # has run: the allocator's pools for a fit are then in place.
    warmup_s: float
    sample_every_s: float = 10.0
    # Of the capacity measured one infer at a time, over the three channels; the refits'
    # own work comes on top.
    load_fraction: float = 0.7
    # Shares of the offered load: the PLC's stream is the steady one the p95 is taken on.
    mqtt_share: float = 0.7
    http_share: float = 0.15
    folder_share: float = 0.15
    max_p95_drift: float = 0.20
    # Whether the p95 drift is a pass condition. A latency is judged only where its windows
    # are long enough not to be noise (the soak's five minutes); the minute run in
    # `make test` records it for the report and asserts nothing about time.
    judge_latency: bool = True
    max_rss_growth_mb: float = 50.0
    # fds and threads that may come and go at a sampling instant (a connection being
    # accepted, a file being moved): a leak grows past these within a minute.
    fd_slack: int = 4
    thread_slack: int = 2


# In 60 s the p95 windows are 15 s (some 50 PLC infers: the p95 is the third slowest),
# which moves by ±25 % between identical runs and by several times on a loaded or slower
# machine: the minute run records its p95 drift but judges only what cannot be noise
# (nothing lost or repeated, RSS, fds, threads); the 20 % of the issue is the soak's,
# over 5-minute windows.
SHORT = LoadPlan(
    duration_s=60,
    refit_every_s=30,
    first_window_s=5,
    window_s=15,
    warmup_s=40,
    load_fraction=0.6,
    judge_latency=False,
)
SOAK = LoadPlan(duration_s=1800, refit_every_s=150, first_window_s=300, window_s=300, warmup_s=300)


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    threads: int


@dataclass
class Channel:
    """One client's requests: send times by request id, and the answers that came back."""

    name: str
    sent: dict[str, float] = field(default_factory=dict)
    answers: dict[str, list[tuple[float, bool, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, request_id: str, at: float) -> None:
        with self.lock:
            self.sent[request_id] = at

    def answer(self, request_id: str, at: float, ok: bool, kind: str = "") -> None:
        with self.lock:
            self.answers.setdefault(request_id, []).append((at, ok, kind))

    def latencies_ms(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """First-answer latencies of the requests sent within [start, end)."""
        with self.lock:
            return [
                (self.answers[rid][0][0] - sent) * 1000
                for rid, sent in self.sent.items()
                if start <= sent < end and rid in self.answers
            ]

    def missing(self) -> int:
        with self.lock:
            return sum(1 for rid in self.sent if rid not in self.answers)

    def repeated(self) -> int:
        with self.lock:
            return sum(1 for a in self.answers.values() if len(a) > 1)

    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.lock:
            for answers in self.answers.values():
                for _, ok, kind in answers:
                    if not ok:
                        counts[kind] = counts.get(kind, 0) + 1
        return counts


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def read_proc(pid: int, t: float) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    return Sample(t, rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"]))


class AgentUnderLoad:
    """The agent process, its broker and the clients that load it; ``stop()`` ends all."""

    def __init__(self, workdir: Path) -> None:
        self.data = workdir / "data"
        self.inbox = self.data / "inbox" / ROI["role_id"] / ROI["roi_id"] / "infer"
        self.broker = Broker(workdir / "mosquitto")
        self.agent: HttpAgent | None = None
        self.http = httpx.Client()  # replaced by the agent's once it is up
        self.plc: Client | None = None

    def start(self) -> None:
        self.broker.start()
        self.agent = HttpAgent(
            self.data,
            BDI_AGENT_ID=AGENT_ID,
            BDI_INPUT_SIZE=str(SIZE),
            BDI_QUEUE_SIZE="256",
            BDI_MQTT__ENABLED="true",
            BDI_MQTT__PORT=str(self.broker.port),
            BDI_FOLDERS__ENABLED="true",
            BDI_FOLDERS__SETTLE_MS="100",
        )
        self.agent.wait_ready()
        self.http.close()
        self.http = self.agent.client()
        self.plc = Client(
            self.broker.port,
            client_id="soak-plc",
            persistent=True,
            subscribe=(f"bdi/{AGENT_ID}/result/#",),
        )

    @property
    def pid(self) -> int:
        assert self.agent is not None
        return self.agent.proc.pid

    def stop(self) -> int | None:
        code = None
        if self.plc is not None:
            self.plc.close()
        self.http.close()
        if self.agent is not None:
            code = self.agent.stop()
        self.broker.stop()
        return code

    # -- the clients' requests -----------------------------------------------------------

    def fit(self, pngs: list[bytes], request_id: str) -> bool:
        response = self.http.post(
            "/fit_ok",
            data={**ROI, "mm_per_px": str(MM_PER_PX)},
            files=[("images", (f"ok{i}.png", p, "image/png")) for i, p in enumerate(pngs)],
            headers={"X-Request-Id": request_id},
        )
        return response.status_code == 200

    def http_infer(self, png: bytes, request_id: str) -> tuple[bool, str]:
        response = self.http.post(
            "/infer",
            data={**ROI, "mm_per_px": str(MM_PER_PX)},
            files={"image": ("roi.png", png, "image/png")},
            headers={"X-Request-Id": request_id},
        )
        body = response.json()
        return response.status_code == 200, body.get("error", {}).get("kind", "")

    def mqtt_infer(self, image_b64: str, request_id: str) -> None:
        assert self.plc is not None
        payload = {**ROI, "mm_per_px": MM_PER_PX, "image": image_b64, "heatmap": False}
        self.plc.publish(f"bdi/{AGENT_ID}/cmd/infer", {**payload, "request_id": request_id})

    def drop(self, png: bytes, request_id: str) -> None:
        """As a camera does: write ``.tmp`` files, rename them when complete."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        side = self.inbox / f"{request_id}.json.tmp"
        side.write_text(json.dumps({"mm_per_px": MM_PER_PX, "request_id": request_id}))
        side.rename(self.inbox / f"{request_id}.json")
        part = self.inbox / f"{request_id}.png.tmp"
        part.write_bytes(png)
        part.rename(self.inbox / f"{request_id}.png")


def paced(rate_per_s: float, stop: threading.Event, action: Callable[[int], None]) -> None:
    """Call ``action(n)`` at a steady rate until ``stop``; late calls do not bunch up."""
    if rate_per_s <= 0:
        return
    period = 1.0 / rate_per_s
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        action(n)
        n += 1
        wait = start + n * period - time.monotonic()
        if wait < -period:  # fell behind (a slow HTTP answer): skip the missed slots
            n = int((time.monotonic() - start) / period)
        elif wait > 0:
            stop.wait(wait)


def run_load(plan: LoadPlan, workdir: Path) -> dict[str, Any]:
    """Run the plan; returns the figures and the verdict of :func:`judge`."""
    n_refits = int(plan.duration_s / plan.refit_every_s) + 1
    discs = make_set(seed=404, n_ok=8 + 2 * n_refits + 6, size=SIZE)
    pngs = [encode_png(d.image) for d in discs]
    fit_pngs, probe_pngs = pngs[:-6], pngs[-6:]
    probe_b64 = [base64.b64encode(p).decode() for p in probe_pngs]
    agent = AgentUnderLoad(workdir)
    mqtt, http, folder = Channel("mqtt"), Channel("http"), Channel("folder")
    refits: list[tuple[float, bool]] = []
    samples: list[Sample] = []
    figures: dict[str, Any] = {}
    try:
        agent.start()
        assert agent.plc is not None
        assert agent.fit(fit_pngs[:8], "fit-0"), "the first fit failed"
        capacity = measure_capacity(agent, probe_pngs)
        offered = plan.load_fraction * capacity

        stop = threading.Event()
        t0 = time.monotonic()

        def at() -> float:
            return time.monotonic() - t0

        def mqtt_send(n: int) -> None:
            rid = f"m-{n}"
            mqtt.send(rid, at())
            agent.mqtt_infer(probe_b64[n % len(probe_b64)], rid)

        def http_send(n: int) -> None:
            rid = f"h-{n}"
            http.send(rid, at())
            ok, kind = agent.http_infer(probe_pngs[n % len(probe_pngs)], rid)
            http.answer(rid, at(), ok, kind)

        def folder_send(n: int) -> None:
            rid = f"f-{n}"
            folder.send(rid, at())
            agent.drop(probe_pngs[n % len(probe_pngs)], rid)

        def refit_loop() -> None:
            n = 1
            while not stop.wait(plan.refit_every_s):
                new = fit_pngs[8 + 2 * (n - 1) : 8 + 2 * n]
                refits.append((at(), len(new) == 2 and agent.fit(new, f"fit-{n}")))
                n += 1

        def sampler() -> None:
            while True:
                samples.append(read_proc(agent.pid, at()))
                if stop.wait(plan.sample_every_s):
                    samples.append(read_proc(agent.pid, at()))
                    return

        threads = [
            threading.Thread(target=paced, args=(offered * plan.mqtt_share, stop, mqtt_send)),
            threading.Thread(target=paced, args=(offered * plan.http_share, stop, http_send)),
            threading.Thread(target=paced, args=(offered * plan.folder_share, stop, folder_send)),
            threading.Thread(target=refit_loop),
            threading.Thread(target=sampler),
        ]
        listen(agent.plc, mqtt, folder, at)
        for thread in threads:
            thread.start()
        stop.wait(plan.duration_s)
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
        traffic_s = at()
        drain(mqtt, folder, timeout=120)
        figures = summarise(plan, capacity, traffic_s, mqtt, http, folder, refits, samples)
        figures["leftover_inbox"] = len([p for p in agent.inbox.glob("*") if p.is_file()])
        figures["failed_files"] = len(list((agent.data / "failed").rglob("*.png")))
    finally:
        figures["agent_exit_code"] = agent.stop()
    figures["verdict"] = judge(plan, figures)
    return figures


def measure_capacity(agent: AgentUnderLoad, pngs: list[bytes], n: int = 24) -> float:
    """Infers per second the agent sustains one at a time (over HTTP, heatmap included),
    from the median round trip, which one slow request does not move: the mixed traffic
    is offered as a fraction of it."""
    agent.http_infer(pngs[0], "warm-0")
    round_trips = []
    for i in range(n):
        started = time.monotonic()
        ok, kind = agent.http_infer(pngs[i % len(pngs)], f"cap-{i}")
        round_trips.append(time.monotonic() - started)
        assert ok, f"capacity probe failed: {kind}"
    return 1 / statistics.median(round_trips)


def listen(plc: Client, mqtt: Channel, folder: Channel, at: Callable[[], float]) -> None:
    """Route the result topic's infer replies to the channel whose request they answer
    (instead of the test client's list of every message: a soak would pile them up)."""

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if not msg.topic.endswith("/result/infer"):
            return
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        rid = str(body.get("request_id", ""))
        channel = mqtt if rid.startswith("m-") else folder if rid.startswith("f-") else None
        if channel is not None:
            kind = "" if body.get("ok") else body.get("error", {}).get("kind", "?")
            channel.answer(rid, at(), bool(body.get("ok")), kind)

    plc.client.on_message = on_message


def drain(mqtt: Channel, folder: Channel, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (mqtt.missing() or folder.missing()) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # a repeated reply would arrive now


def stats(latencies: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": round(percentile(latencies, 50) or 0, 1) if latencies else None,
        "p95_ms": round(percentile(latencies, 95) or 0, 1) if latencies else None,
    }


def summarise(
    plan: LoadPlan,
    capacity: float,
    traffic_s: float,
    mqtt: Channel,
    http: Channel,
    folder: Channel,
    refits: list[tuple[float, bool]],
    samples: list[Sample],
) -> dict[str, Any]:
    channels = (mqtt, http, folder)
    sent = sum(len(c.sent) for c in channels)
    first = mqtt.latencies_ms(plan.first_window_s, plan.first_window_s + plan.window_s)
    last = mqtt.latencies_ms(traffic_s - plan.window_s, traffic_s)
    p95_first, p95_last = percentile(first, 95), percentile(last, 95)
    base = next((s for s in samples if s.t >= plan.warmup_s), samples[-1])
    end = samples[-1]
    figures: dict[str, Any] = {
        "plan": asdict(plan),
        "capacity_per_s": round(capacity, 2),
        "traffic_s": round(traffic_s, 1),
        "requests": sent + len(refits),
        "rate_per_s": round(sent / traffic_s, 2),
        "missing": sum(c.missing() for c in channels),
        "repeated": sum(c.repeated() for c in channels),
        "errors": {f"{c.name}:{k}": v for c in channels for k, v in c.errors().items()},
        "refits": len(refits),
        "refits_failed": sum(1 for _, ok in refits if not ok),
        "p95_first_ms": round(p95_first, 1) if p95_first else None,
        "p95_last_ms": round(p95_last, 1) if p95_last else None,
        "p95_drift": round(p95_last / p95_first - 1, 3) if p95_first and p95_last else None,
        "rss_start_mb": round(base.rss_mb, 1),
        "rss_end_mb": round(end.rss_mb, 1),
        "rss_drift_mb": round(end.rss_mb - base.rss_mb, 1),
        "rss_max_mb": round(max(s.rss_mb for s in samples), 1),
        "fds": [base.fds, end.fds],
        "threads": [base.threads, end.threads],
        "samples": [asdict(s) for s in samples],
    }
    for channel in channels:
        figures[channel.name] = {"sent": len(channel.sent), **stats(channel.latencies_ms())}
    all_latencies = [v for c in channels for v in c.latencies_ms()]
    figures.update(stats(all_latencies))
    return figures


def judge(plan: LoadPlan, f: dict[str, Any]) -> dict[str, bool]:
    """Each pass condition of ``plan``, by name."""
    verdict = {
        "every request answered once": (
            f["missing"] == 0
            and f["repeated"] == 0
            and not f["errors"]
            and f["refits_failed"] == 0
            and f["leftover_inbox"] == 0
            and f["failed_files"] == 0
        ),
        "RSS growth under limit": f["rss_drift_mb"] < plan.max_rss_growth_mb,
        "no fd growth": f["fds"][1] <= f["fds"][0] + plan.fd_slack,
        "no thread growth": f["threads"][1] <= f["threads"][0] + plan.thread_slack,
        "clean stop": f["agent_exit_code"] == 0,
    }
    if plan.judge_latency:
        verdict["p95 stable"] = f["p95_drift"] is not None and f["p95_drift"] <= plan.max_p95_drift
    return verdict
