"""The folder adapter's inbox: real files, a real watchdog observer, the real engine
(random weights, 112-px discs)."""

from __future__ import annotations

import json
import os
import time

import cv2
import pytest

from adapters.folders import inbox as folders_inbox
from tests.adapters.test_folders_support import (
    MM,
    discs,
    drop,
    failed,
    fit,
    inbox_files,
    infer_direct,
    processed,
    read_json,
    wait_for,
)


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    return discs(seed=31, n_ok=10)


def test_a_file_written_in_chunks_is_handled_once_after_the_last_chunk(agents, pngs) -> None:
    agent, _, published = agents.make()
    fit(agent, "r", "i", pngs[:6])
    data = agent.settings.data_root
    folder = data / "inbox" / "r" / "i" / "infer"
    folder.mkdir(parents=True)
    (folder / "part.json").write_text(json.dumps({"mm_per_px": MM, "request_id": "chunky"}))
    png = pngs[6]
    step = len(png) // 10 + 1
    # One open, ten writes over a second; each pause is longer than settle_ms (100), so only
    # the missing close tells that the file is still being written.
    with open(folder / "part.png", "wb") as handle:
        for start in range(0, len(png), step):
            handle.write(png[start : start + step])
            handle.flush()
            time.sleep(0.12)
        last_write = time.monotonic()
    wait_for(lambda: processed(data), 30, "the result")
    time.sleep(0.5)  # a second handling would show up by now
    assert [p.name for p in processed(data)] == ["part.result.json"]
    infers = published.of("infer")
    assert len(infers) == 1 and infers[0][2] >= last_write
    reply, extra, _ = infers[0]
    dest = processed(data, "part.png")[0]
    assert extra == {"source": "folder", "path": str(dest)}
    body = read_json(processed(data)[0])
    assert body["request_id"] == "chunky" and body["recipe_id"] == "default"
    assert body["score"] == pytest.approx(infer_direct(agent, "r", "i", png)["score"], rel=1e-4)
    assert body["token_shape"] == [8, 8] and "heatmap_png_base64" not in body
    assert reply.to_dict()["heatmap_png_base64"]  # the published reply keeps its heatmap
    heatmap = cv2.imread(str(dest.with_name("part.heatmap.png")), cv2.IMREAD_UNCHANGED)
    assert heatmap.shape == (112, 112)
    assert dest.read_bytes() == png and read_json(dest.with_name("part.json"))["mm_per_px"] == MM
    assert not failed(data) and inbox_files(data) == []


def test_a_tmp_file_waits_for_its_rename_and_is_handled_once(agents, pngs) -> None:
    agent, _, published = agents.make()
    fit(agent, "r", "i", pngs[:6])
    data = agent.settings.data_root
    folder = data / "inbox" / "r" / "i" / "infer"
    folder.mkdir(parents=True)
    (folder / "cam.json").write_text(json.dumps({"mm_per_px": MM}))
    (folder / "cam.png.tmp").write_bytes(pngs[7])
    (folder / ".hidden.png").write_bytes(pngs[7])
    time.sleep(2.5)  # settle periods and a rescan: a partial or hidden name is never taken
    assert not published.items and not processed(data)
    os.rename(folder / "cam.png.tmp", folder / "cam.png")
    wait_for(lambda: processed(data), 30, "the result")
    time.sleep(0.5)
    assert len(processed(data)) == 1 and len(published.of("infer")) == 1
    assert inbox_files(data) == [folder / ".hidden.png"]  # hidden files are not ours


def test_a_burst_of_300_files_over_3_rois_is_handled_exactly_once(agents, pngs) -> None:
    rois = "rois:\n" + "".join(
        f"  - {{role_id: r, roi_id: {roi}, mm_per_px: {MM}}}\n" for roi in "abc"
    )
    agent, _, published = agents.make(rois=rois)
    for roi in "abc":
        fit(agent, "r", roi, pngs[:6])
    data = agent.settings.data_root
    for roi in "abc":
        (data / "inbox" / "r" / roi / "infer").mkdir(parents=True)
    started = time.monotonic()
    for i in range(300):  # no sidecars: the ROI defaults give the scale
        folder = data / "inbox" / "r" / "abc"[i % 3] / "infer"
        png = pngs[i % len(pngs)]
        if i % 2:
            drop(folder, f"img{i:03d}.png", png)
        else:
            (folder / f"img{i:03d}.png").write_bytes(png)
    wait_for(lambda: len(processed(data)) >= 300 and not inbox_files(data), 240, "300 results")
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    results = processed(data)
    assert len(results) == 300 and not failed(data, "*")
    images = [p for p in processed(data, "img*.png") if not p.name.endswith(".heatmap.png")]
    assert sorted(p.name for p in images) == [f"img{i:03d}.png" for i in range(300)]
    assert all(p.parent.parent.name == "abc"[int(p.stem[3:]) % 3] for p in images)
    ids = {reply.command.request_id for reply, _, _ in published.of("infer")}
    assert len(published.of("infer")) == 300 and len(ids) == 300
    assert all(read_json(p)["token_shape"] == [8, 8] for p in results)
    print(f"300 files in {elapsed:.1f} s ({300 / elapsed:.1f} files/s)")


def test_files_dropped_while_the_agent_is_down_are_handled_on_start(agents, pngs) -> None:
    agent, adapter, _ = agents.make()
    fit(agent, "r", "i", pngs[:6])
    data = agent.settings.data_root
    agents.stop(agent, adapter)
    for i in range(3):
        drop(data / "inbox" / "r" / "i" / "infer", f"late{i}.png", pngs[i], {"mm_per_px": MM})
        drop(data / "inbox" / "r" / "i" / "ok", f"more{i}.png", pngs[6 + i], {"mm_per_px": MM})
    agent, _, published = agents.make(data_root=data)
    wait_for(lambda: published.of("refit"), 60, "the refit of the new OK samples")
    wait_for(lambda: len(processed(data)) == 6, 30, "six results")
    assert inbox_files(data) == [] and not failed(data, "*")
    assert len(published.of("infer")) == 3 and len(published.of("refit")) == 1
    assert published.of("refit")[0][0].to_dict()["n_samples"] == 9
    ok_result = read_json(processed(data, "more0.result.json")[0])
    assert ok_result["ok_added"] == 1 and ok_result["memory_fit"] is False


def test_bad_files_fail_with_their_error_and_the_adapter_goes_on(agents, pngs) -> None:
    agent, _, published = agents.make()
    fit(agent, "r", "i", pngs[:6])
    data = agent.settings.data_root
    infer = data / "inbox" / "r" / "i" / "infer"
    png = pngs[6]
    drop(infer, "corrupt.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 40, {"mm_per_px": MM})
    drop(infer, "noscale.png", png, {"request_id": "no-scale"})
    infer.joinpath("badjson.json").write_text("{not json")
    drop(infer, "badjson.png", png)
    outside = {"kind": "rect", "x": 500, "y": 500, "w": 10, "h": 10}
    drop(infer, "outside.png", png, {"mm_per_px": MM, "shape": outside})
    drop(infer, "bare.png", png)  # no sidecar, no default: refused after a grace period
    drop(data / "inbox" / "r" / "i" / "train", "typo.png", png, {"mm_per_px": MM})
    drop(data / "inbox" / "r" / "i" / "ok", "scale.png", png, {"mm_per_px": 0.3})
    drop(infer, "good.png", png, {"mm_per_px": MM})
    wait_for(lambda: len(failed(data)) == 7 and processed(data), 60, "7 failures and 1 result")
    errors = {p.name.removesuffix(".error.json"): read_json(p) for p in failed(data)}
    kinds = {name: body["error"]["kind"] for name, body in errors.items()}
    assert kinds == {
        "corrupt": "bad_request",
        "noscale": "bad_request",
        "badjson": "bad_request",
        "outside": "bad_request",
        "bare": "bad_request",
        "typo": "bad_request",
        "scale": "scale_mismatch",
    }
    assert all(set(body) == {"error", "request_id", "recipe_id"} for body in errors.values())
    assert all(set(body["error"]) == {"code", "kind", "message"} for body in errors.values())
    assert errors["scale"]["error"]["code"] == 409
    assert "mm_per_px" in errors["noscale"]["error"]["message"]
    assert errors["noscale"]["request_id"] == "no-scale"
    assert "not valid JSON" in errors["badjson"]["error"]["message"]
    assert "covers no pixel" in errors["outside"]["error"]["message"]
    assert "no sidecar bare.json" in errors["bare"]["error"]["message"]
    assert "'train'" in errors["typo"]["error"]["message"]
    failed_dir = failed(data, "badjson.error.json")[0].parent
    assert failed_dir.joinpath("badjson.json").read_text() == "{not json"  # moved with it
    assert failed_dir.joinpath("badjson.png").read_bytes() == png
    assert [p.name for p in processed(data)] == ["good.result.json"]
    assert inbox_files(data) == []
    outcomes = {e["path"].rsplit("/", 1)[1]: r.ok for r, e, _ in published.of("infer")}
    assert outcomes == {
        "corrupt.png": False,
        "noscale.png": False,
        "badjson.png": False,
        "outside.png": False,
        "bare.png": False,
        "good.png": True,
    }


def test_a_burst_of_50_ok_files_gives_one_refit_used_by_later_infers(agents) -> None:
    agent, _, published = agents.make(fit_debounce_s=1.0)
    data = agent.settings.data_root
    ok = data / "inbox" / "r" / "i" / "ok"
    for i, png in enumerate(discs(seed=41, n_ok=50)):
        drop(ok, f"ok{i:02d}.png", png, {"mm_per_px": MM})
    refit = wait_for(lambda: published.of("refit"), 120, "the refit")
    time.sleep(2.0)  # longer than the debounce: a second refit would have started
    assert len(published.of("refit")) == 1
    body = refit[0][0].to_dict()
    assert body["n_samples"] == 50 and body["ok_added"] == 0 and body["token_shape"] == [8, 8]
    assert refit[0][1]["source"] == "folder"
    assert len(processed(data, "ok*.result.json")) == 50 and inbox_files(data) == []
    assert not list((data / "processed" / ".state" / "refits").iterdir())
    drop(data / "inbox" / "r" / "i" / "infer", "after.png", discs(42, 1)[0], {"mm_per_px": MM})
    result = wait_for(lambda: processed(data, "after.result.json"), 30, "the infer")
    assert read_json(result[0])["model_version"] == body["model_version"]


def test_the_polling_observer_handles_files_too(agents, pngs) -> None:
    agent, _, published = agents.make(polling=True)  # network shares: no inotify events
    fit(agent, "r", "i", pngs[:6])
    data = agent.settings.data_root
    drop(data / "inbox" / "r" / "i" / "infer", "renamed.png", pngs[6], {"mm_per_px": MM})
    (data / "inbox" / "r" / "i" / "infer" / "written.json").write_text('{"mm_per_px": 0.2}')
    (data / "inbox" / "r" / "i" / "infer" / "written.png").write_bytes(pngs[7])
    wait_for(lambda: len(processed(data)) == 2, 30, "two results")
    assert inbox_files(data) == [] and len(published.of("infer")) == 2


def test_an_orphan_sidecar_goes_to_failed_but_not_one_whose_image_is_coming(
    agents, monkeypatch
) -> None:
    monkeypatch.setattr(folders_inbox, "ORPHAN_SIDECAR_S", 0.5)
    agent, _, _ = agents.make()
    data = agent.settings.data_root
    infer = data / "inbox" / "r" / "i" / "infer"
    infer.mkdir(parents=True)
    (infer / "lonely.json").write_text('{"mm_per_px": 0.2}')
    (infer / "slow.json").write_text('{"mm_per_px": 0.2}')
    (infer / "slow.png.part").write_bytes(b"half an image")
    (data / "inbox" / "stray.png").write_bytes(b"not where it belongs")
    moved = wait_for(lambda: failed(data, "lonely.json"), 30, "the orphan in failed/")
    assert "no image" in read_json(moved[0].with_name("lonely.error.json"))["error"]["message"]
    time.sleep(2.5)  # another rescan: the others stay where they are
    assert sorted(p.name for p in inbox_files(data)) == ["slow.json", "slow.png.part", "stray.png"]
