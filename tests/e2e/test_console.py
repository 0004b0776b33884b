"""The operators' console (``GET /ui/``) in a real browser: Debian's chromium driven by
Playwright, against a real agent (random-weight backbone) with an API key.

One browser and one agent for every check, in the order an operator meets them: the key
is asked for, health and the ROIs show, a verdict arrives live with its image and heatmap,
a calibration shows, three anomalies in a row raise an alert, and events sent while the
stream was down arrive after it reconnects (Last-Event-ID). Screenshots go to
``$BDI_CONSOLE_SHOTS`` (default ``<tmp>/bdi-console-shots``), outside the repository.
"""

# The fixtures come from test_http_support (imported below), and their names are the
# parameters of the tests: that is how pytest injects them, not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Locator, Page, expect, sync_playwright

from tests.adapters.test_http_support import (  # noqa: F401 (fixtures)
    FORM,
    ROI,
    Server,
    files,
    image,
    serve,
)

KEY = "line-3-key"
ROW = f'#rois tr[data-roi="default|{ROI["role_id"]}|{ROI["roi_id"]}"]'
SHOTS = Path(
    os.environ.get("BDI_CONSOLE_SHOTS") or Path(tempfile.gettempdir()) / "bdi-console-shots"
)


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is not installed: `make test` installs it (apt-get install chromium)"
    return path


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


# The theme's colours as the charts draw them (charts.js).
GREEN, RED = (63, 185, 80), (248, 81, 73)

# How many pixels of a chart's canvas are near a colour: what a user sees drawn there
# (uPlot draws on a canvas, so there is no element per bar or dot to find).
COLOURED = """([selector, rgb]) => {
  const canvas = document.querySelector(`${selector} canvas`);
  if (!canvas) return -1;
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    const near = [0, 1, 2].every((c) => Math.abs(data[i + c] - rgb[c]) < 40);
    if (near && data[i + 3] > 100) n += 1;
  }
  return n;
}"""


def coloured(page: Page, chart: str, rgb: tuple[int, int, int], drawn: bool) -> None:
    """Wait until the chart shows that colour (drawn) or shows none of it."""
    test = f"(a) => ({COLOURED})(a) {'> 0' if drawn else '=== 0'}"
    page.wait_for_function(test, arg=[chart, list(rgb)])


def chart_is_drawn(page: Page, chart: str) -> None:
    """A uPlot canvas a user can see: drawn, with a size, not a placeholder message."""
    expect(page.locator(chart)).to_have_attribute("data-chart", "drawn")
    canvas = page.locator(f"{chart} canvas")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    assert box and box["width"] > 150 and box["height"] > 100, box


def legend(page: Page, chart: str, label: str) -> Locator:
    """The value a chart's legend shows next to one label (the summary, not hovered)."""
    return page.locator(f'{chart} .u-series:has(.u-label:text-is("{label}")) .u-value')


def test_the_console_shows_the_agent_live(
    serve: Callable[..., Server], ok_pngs: list[bytes]
) -> None:
    server = serve(api_key=KEY)
    api = server.client  # sends the key
    fit = api.post("/fit_ok", data=FORM, files=files("images", ok_pngs[:8]))
    assert fit.status_code == 200, fit.json()
    expect.set_options(timeout=20_000)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 960})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: (
                problems.append(f"console: {message.text}")
                if message.type == "error" and "401" not in message.text  # the refused key
                else None
            ),
        )

        # The page is public; it asks for the key, and refuses a wrong one.
        page.goto(f"{server.url}/ui")
        expect(page.locator("#login")).to_be_visible()
        page.fill("#key", "wrong")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_be_visible()
        shot(page, "01-key")
        page.fill("#key", KEY)
        page.click("#login-form button")

        # Health, the stream and the fitted ROI.
        expect(page.locator("#app")).to_be_visible()
        expect(page.locator("#health-status")).to_have_text("online")
        expect(page.locator("#health-detail")).to_contain_text("weights random")
        expect(page.locator("#live")).to_have_attribute("data-state", "live")
        expect(page.locator("#agent-id")).to_have_text(server.agent.settings.agent_id)
        expect(page.locator("#stats")).to_contain_text("MQTT disabled")
        expect(page.locator("#stats")).to_contain_text("spool 0")
        row = page.locator(ROW)
        expect(row.locator(".memory")).to_contain_text("fitted")
        expect(row.locator(".threshold")).to_have_text("uncalibrated")
        expect(page.locator("#viewer-empty")).to_be_visible()
        expect(page.locator("#trend .chart-empty")).to_have_text("no verdict for this ROI yet")
        expect(page.locator("#calibration .chart-empty")).to_contain_text("not calibrated")

        # A verdict through the real path arrives live, with its image and heatmap.
        reply = api.post("/infer", data=FORM, files=image(ok_pngs[9])).json()
        first = page.locator("#verdicts li").first
        expect(first).to_contain_text(f"{ROI['role_id']} / {ROI['roi_id']}")
        expect(first.locator(".badge")).to_have_text("no threshold")
        expect(page.locator("#view")).to_have_attribute("data-heatmap", "yes")
        page.wait_for_function("document.querySelector('#verdicts img').naturalWidth > 0")
        expect(page.locator("#viewer-facts")).to_contain_text(f"{reply['score']:.4f}")
        expect(row.locator(".last-score")).to_have_text(f"{reply['score']:.4f}")
        expect(row.locator(".spark canvas")).to_be_visible()
        chart_is_drawn(page, "#trend")
        expect(legend(page, "#trend", "score")).to_have_text(f"{reply['score']:.4f}")
        # /stats is polled every few seconds: the infer's time shows.
        expect(page.locator("#stats")).to_contain_text(re.compile(r"p50 \d+\.\d / p95 \d+\.\d ms"))
        page.locator("#opacity").fill("85")
        shot(page, "02-verdict")

        # Calibrated below this disc's scores: every later verdict is NG; three in a row
        # raise the alert.
        score = reply["score"]
        scores = {"ok_scores": [score * f for f in (0.3, 0.4, 0.5)], "ng_scores": [score * 0.9]}
        calibrated = api.post("/calibrate_ng", json={**ROI, **scores})
        assert calibrated.status_code == 200, calibrated.json()
        threshold = calibrated.json()["threshold"]
        expect(row.locator(".threshold")).to_have_text(f"{threshold:.4f}")
        # The stored scores drawn as histograms (OK green, NG red), with the threshold,
        # p99 OK and p5 NG named in the legend with their values.
        chart_is_drawn(page, "#calibration")
        kept = api.get("/manifest", params=ROI).json()["calibration"]
        expect(legend(page, "#calibration", "OK")).to_have_text("3")
        expect(legend(page, "#calibration", "NG")).to_have_text("1")
        expect(legend(page, "#calibration", "threshold")).to_have_text(f"{threshold:.4f}")
        expect(legend(page, "#calibration", "p99 OK")).to_have_text(f"{kept['p99_ok']:.4f}")
        expect(legend(page, "#calibration", "p5 NG")).to_have_text(f"{kept['p5_ng']:.4f}")
        coloured(page, "#calibration", GREEN, drawn=True)
        coloured(page, "#calibration", RED, drawn=True)
        for disc in ok_pngs[9:12]:
            assert api.post("/infer", data=FORM, files=image(disc)).status_code == 200
        expect(page.locator("#verdicts li")).to_have_count(4)
        expect(page.locator("#verdicts li .badge.ng")).to_have_count(3)
        alert = page.locator("#alerts li.alert.on")
        expect(alert).to_contain_text("3 anomalous verdicts in a row")
        expect(page.locator("#alert-banner")).to_be_visible()
        expect(row).to_have_class(re.compile(r"\bin-alert\b"))
        # The trend: three NG dots (red) under the threshold's dashed line, named in the
        # legend and on the line.
        chart_is_drawn(page, "#trend")
        expect(legend(page, "#trend", "NG")).to_have_text("3")
        expect(legend(page, "#trend", "threshold")).to_have_text(f"{threshold:.4f}")
        coloured(page, "#trend", RED, drawn=True)
        shot(page, "03-alert")

        # Events sent while the stream is down arrive after it reconnects: the alert's end
        # is in no snapshot, only in the stream's backlog (Last-Event-ID).
        page.evaluate("window.bdiConsole.disconnect()")
        expect(page.locator("#live")).to_have_attribute("data-state", "off")
        cleared = {"kind": "cleared", "count": 3, "since": None, "last_request_id": "x"}
        server.agent.bus.events.emit("alert", {**cleared, "recipe_id": "default", **ROI})
        page.evaluate("() => { window.bdiConsole.reconnect(); }")
        expect(page.locator("#alerts li.alert.cleared")).to_have_count(1)
        expect(page.locator("#alert-banner")).to_be_hidden()
        expect(page.locator("#verdicts li")).to_have_count(4)  # nothing twice
        shot(page, "04-cleared")

        # The ROI's stored samples, and a recalibration from them (the agent scores its
        # stored OK samples itself; none is NG): the histograms are drawn again.
        stored = api.get("/manifest", params=ROI).json()["datasets"]
        counts = f"stored samples: {stored['ok']} OK · {stored['ng']} NG"
        expect(page.locator("#roi-datasets")).to_have_text(counts)
        page.click("#recalibrate")
        expect(page.locator("#recalibrate-status")).to_contain_text("threshold")
        expect(page.locator("#calibration-note")).to_contain_text("(self_scored)")
        expect(legend(page, "#calibration", "NG")).to_have_text("0")
        expect(legend(page, "#calibration", "p5 NG")).to_have_text("—")
        chart_is_drawn(page, "#calibration")
        coloured(page, "#calibration", GREEN, drawn=True)
        coloured(page, "#calibration", RED, drawn=False)  # no NG bar, no p5 NG line
        shot(page, "05-recalibrated")

        # Usable on a laptop and on a tablet held upright.
        for name, size in (("06-1280x800", (1280, 800)), ("07-tablet-820x1180", (820, 1180))):
            page.set_viewport_size({"width": size[0], "height": size[1]})
            expect(page.locator("#recalibrate")).to_be_visible()
            for chart in ("#trend", "#calibration"):
                chart_is_drawn(page, chart)  # sized again to the narrower column
                width = page.locator(f"{chart} canvas").bounding_box()["width"]
                column = page.locator(chart).bounding_box()["width"]
                assert width <= column, (name, chart, width, column)
            shot(page, name)

        assert page.evaluate(PARSE_TRICKY_STREAM) == TRICKY_STREAM_EVENTS

        browser.close()
    assert not problems, problems


# The console's SSE parser (sse.js) on what a network may do to a stream: lines split
# anywhere across chunks, CR LF split between two chunks, bare CR, comments, multi-line
# data, an event without data (not dispatched), an id kept for later events.
PARSE_TRICKY_STREAM = r"""() => {
  const got = [];
  const parser = new SseParser({
    onEvent: (e) => got.push([e.type, e.data, e.lastEventId]),
    onComment: (text) => got.push(["comment", text]),
    onRetry: (ms) => got.push(["retry", ms]),
  });
  const chunks = ["retry: 3000\n: hel", "lo\n\nevent: verdict\nid: 7\nda", "ta: {\"a\":1}\r",
    "\n\r\nevent: state\ndata: x\rdata:y\n\nevent: nothing\n\ndata:  z\n\n"];
  for (const chunk of chunks) parser.push(chunk);
  return got;
}"""
TRICKY_STREAM_EVENTS = [
    ["retry", 3000],
    ["comment", "hello"],
    ["verdict", '{"a":1}', "7"],
    ["state", "x\ny", "7"],
    ["message", " z", "7"],
]
