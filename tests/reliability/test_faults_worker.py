"""Callers that give up: the worker thread must outlive them.

An HTTP server that shuts down cancels the requests it still holds, and with them the
futures of their commands. A command whose caller gave up before it started is dropped,
not run; one that has started finishes. Either way the worker goes on answering the next
commands: a dead worker thread would leave every later command unanswered.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import CancelledError

import pytest

from agent.demo.discs import encode_png, make_set
from agent.parsing import parse_command
from tests.reliability.fault_support import MM, ROI, check_data_root


@pytest.mark.reliability("fault", "callers that give up while their command waits")
def test_cancelled_commands_are_dropped_and_the_worker_goes_on(
    make_agent: Callable[..., object],
    record_property: Callable[[str, object], None],
) -> None:
    agent = make_agent()
    pngs = [encode_png(d.image) for d in make_set(seed=91, n_ok=16, size=224)]
    fit = parse_command("fit_ok", {**ROI, "mm_per_px": MM, "images": pngs[:12]}, "test")
    running = agent.bus.submit(fit)  # keeps the worker busy while the others queue
    waiting = [
        agent.bus.submit(
            parse_command(
                "add_ng", {**ROI, "mm_per_px": MM, "images": [png], "request_id": f"gone-{i}"}, "t"
            )
        )
        for i, png in enumerate(pngs[12:15])
    ]
    cancelled = sum(future.cancel() for future in waiting)
    problems = []
    if not running.result(120).ok:
        problems.append(f"the fit failed: {running.result().to_dict()}")
    for future in waiting:
        try:
            future.result(60)
            problems.append("a cancelled command was answered")
        except CancelledError:
            pass
    # The worker is alive: the next commands are answered.
    later = agent.bus.execute(
        parse_command("add_ng", {**ROI, "mm_per_px": MM, "images": [pngs[15]]}, "test"), 60
    )
    manifest = agent.bus.execute(parse_command("manifest", ROI, "test"), 60)
    if not later.ok or not manifest.ok:
        problems.append(f"the worker stopped answering: {later.to_dict()} {manifest.to_dict()}")
    elif manifest.body is not None and manifest.body["datasets"]["ng"] != 1:
        problems.append(f"cancelled commands were applied: {manifest.body['datasets']}")
    integrity = check_data_root(agent.settings.data_root)
    problems += integrity.problems
    record_property("tried", len(waiting))
    record_property("failures", len(problems))
    record_property("lost", 12 - integrity.shas("ok").total())
    record_property("detail", f"{cancelled} cancelled while queued: dropped; the worker answers on")
    assert cancelled == len(waiting), "the commands were not waiting: nothing was tried"
    assert not problems, problems
