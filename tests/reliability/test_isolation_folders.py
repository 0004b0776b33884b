"""The folder adapter's share of issue 18 (points 5 and 8), on real files with a real
watchdog observer: a sidecar ``request_id`` reused for other images is not a repeat, and
a symbolic link or FIFO in the inbox fails like any file that can never succeed instead
of staying there for good."""

# Fixtures come from tests/adapters/conftest.py.
# ruff: noqa: F811

from __future__ import annotations

import os

import pytest

from agent.parsing import parse_command
from tests.adapters.conftest import agents, extractor112  # noqa: F401
from tests.adapters.test_folders_support import (
    MM,
    FolderAgents,
    discs,
    drop,
    failed,
    fit,
    inbox_files,
    processed,
    read_json,
    wait_for,
)


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    return discs(seed=41, n_ok=10)


@pytest.mark.reliability(
    "bad_input", "inbox: a symlink to /proc/self/status, a FIFO, a dangling link"
)
def test_links_and_fifos_in_the_inbox_fail_and_the_inbox_goes_on(
    agents: FolderAgents, pngs: list[bytes], record_property
) -> None:
    agent, _, published = agents.make()
    fit(agent, "r", "i", pngs[:4])
    data = agent.settings.data_root
    infer = data / "inbox" / "r" / "i" / "infer"
    infer.mkdir(parents=True)
    (infer / "status.png").symlink_to("/proc/self/status")
    (infer / "gone.png").symlink_to(data / "nowhere.png")
    os.mkfifo(infer / "pipe.png")
    drop(infer, "good.png", pngs[5], {"mm_per_px": MM})
    wait_for(lambda: len(failed(data)) == 3 and processed(data), 60, "3 failures and 1 result")
    errors = {p.name.removesuffix(".error.json"): read_json(p) for p in failed(data)}
    assert set(errors) == {"status", "gone", "pipe"}
    for name, kind in (("status", "symbolic link"), ("gone", "symbolic link"), ("pipe", "FIFO")):
        assert errors[name]["error"]["kind"] == "bad_request"
        assert kind in errors[name]["error"]["message"]
    moved = failed(data, "status.error.json")[0].parent / "status.png"
    assert moved.is_symlink()  # moved as the link it is, never followed or read
    assert inbox_files(data) == [] and not any((data / "inbox").rglob("*.png"))
    outcomes = {e["path"].rsplit("/", 1)[1]: r.ok for r, e, _ in published.of("infer")}
    assert outcomes == {"status.png": False, "gone.png": False, "pipe.png": False, "good.png": True}
    record_property("tried", 3)
    record_property("failures", 0)
    record_property("detail", "each moved to failed/ with its error and published; inbox empty")


@pytest.mark.reliability("bad_input", "inbox: one sidecar request_id for 3 OK images, 2 ROIs")
def test_a_sidecar_request_id_reused_for_other_images_is_no_repeat(
    agents: FolderAgents, pngs: list[bytes], record_property
) -> None:
    agent, _, published = agents.make(fit_debounce_s=60)  # no refit in the way
    data = agent.settings.data_root
    ok = data / "inbox" / "r" / "i" / "ok"
    for i in range(3):
        drop(ok, f"ok{i}.png", pngs[i], {"mm_per_px": MM, "request_id": "cam-1"})
    wait_for(lambda: len(processed(data)) + len(failed(data)) == 3, 60, "3 OK files handled")
    listing = agent.bus.execute(
        parse_command("dataset_list", {"role_id": "r", "roi_id": "i", "label": "ok"}, "test")
    )
    assert listing.body is not None
    assert listing.body["datasets"]["ok"]["count"] == 1  # one took the id
    errors = [read_json(p)["error"] for p in failed(data)]
    assert len(errors) == 2
    assert all(e["kind"] == "bad_request" and "already used" in e["message"] for e in errors)
    # Reads with one reused id on two ROIs are two inferences, each of its own ROI.
    for roi in ("a", "b"):
        fit(agent, "r", roi, pngs[3:6])
    for roi in ("a", "b"):
        drop(
            data / "inbox" / "r" / roi / "infer",
            "part.png",
            pngs[7],
            {"mm_per_px": MM, "request_id": "part-7"},
        )
    wait_for(lambda: len(published.of("infer")) == 2, 60, "2 verdicts")
    verdicts = [reply for reply, _, _ in published.of("infer")]
    assert all(reply.ok for reply in verdicts)
    assert sorted(reply.body["roi_id"] for reply in verdicts) == ["a", "b"]  # type: ignore[index]
    record_property("tried", 5)
    record_property("failures", 0)
    record_property("detail", "1 of 3 OK images stored, 2 failed with the reason; 2 verdicts")
