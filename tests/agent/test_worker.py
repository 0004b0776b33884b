"""Scheduling: infers before fits, micro-batching, bounded queue, deadlines, idempotency."""

from __future__ import annotations

import base64
import threading
import time

from agent.parsing import parse_command

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fit_cmd(pngs, request_id: str | None = None):
    payload = {**ROI, "mm_per_px": 0.2, "images": [b64(p) for p in pngs]}
    if request_id:
        payload["request_id"] = request_id
    return parse_command("fit_ok", payload, "test")


def infer_cmd(png: bytes):
    return parse_command(
        "infer", {**ROI, "mm_per_px": 0.2, "image": b64(png), "heatmap": False}, "test"
    )


def started_fit(agent, pngs):
    """Submit a fit and return once its backbone work has begun."""
    begun = threading.Event()
    agent.services.core.progress = lambda stage, done, total: done > 0 and begun.set()
    future = agent.bus.submit(fit_cmd(pngs))
    assert begun.wait(60)
    return future


def test_infer_during_a_fit_is_answered_before_the_fit_ends(make_agent, ok_pngs) -> None:
    agent = make_agent(max_batch=1)
    assert agent.bus.execute(fit_cmd(ok_pngs[:2])).ok
    fit = started_fit(agent, ok_pngs[2:12])
    infer = agent.bus.submit(infer_cmd(ok_pngs[0]))
    reply = infer.result(60)
    assert reply.ok and not fit.done()
    assert fit.result(120).ok


def test_infers_waiting_together_share_one_backbone_pass(make_agent, ok_pngs) -> None:
    agent = make_agent(max_batch=8)
    assert agent.bus.execute(fit_cmd(ok_pngs[:2])).ok
    agent.services.cache.get  # noqa: B018 - memory now cached
    fit = started_fit(agent, ok_pngs[2:12])
    passes_before = agent.worker.backbone_passes
    infers = [agent.bus.submit(infer_cmd(p)) for p in ok_pngs[:6]]
    replies = [f.result(60) for f in infers]
    assert all(r.ok for r in replies)
    assert agent.worker.backbone_passes - passes_before == 1
    assert fit.result(120).ok


def test_a_full_queue_answers_busy_at_once(make_agent, ok_pngs) -> None:
    agent = make_agent(queue_size=2, max_batch=1)
    fit = started_fit(agent, ok_pngs[:12])
    manifest = parse_command("manifest", ROI, "test")
    waiting = [agent.bus.submit(manifest), agent.bus.submit(manifest)]
    refused = agent.bus.submit(manifest)
    assert refused.done()  # answered by submit itself: nothing was queued or waited for
    error = refused.result().error
    assert error is not None and error.kind == "busy" and error.code == 503
    assert "queue full" in error.message
    assert fit.result(120).ok and all(f.result(30).ok for f in waiting)


def test_a_command_whose_deadline_passed_is_not_run(make_agent) -> None:
    agent = make_agent()
    cmd = parse_command("manifest", ROI, "test", deadline=time.monotonic() - 1)
    reply = agent.bus.execute(cmd)
    assert reply.error is not None and reply.error.kind == "busy"
    assert "deadline" in reply.error.message


def test_a_repeated_request_id_is_applied_once_also_after_a_restart(
    make_agent, ok_pngs, tmp_path
) -> None:
    root = tmp_path / "shared-root"
    agent = make_agent(data_root=root)
    first = agent.bus.execute(fit_cmd(ok_pngs[:3], request_id="fit-once"))
    again = agent.bus.execute(fit_cmd(ok_pngs[:3], request_id="fit-once"))
    assert first.ok and again.replayed
    assert again.to_dict() == first.to_dict()
    agent.stop()
    restarted = make_agent(data_root=root)
    third = restarted.bus.execute(fit_cmd(ok_pngs[:3], request_id="fit-once"))
    assert third.replayed and third.to_dict() == first.to_dict()
    manifest = restarted.bus.execute(parse_command("manifest", ROI, "test")).to_dict()
    assert manifest["datasets"]["ok"] == 3
    other = restarted.bus.execute(fit_cmd(ok_pngs[3:4], request_id="fit-other"))
    assert other.ok and not other.replayed and other.to_dict()["n_samples"] == 4


def test_a_request_id_reused_for_other_inputs_is_refused_not_replayed(make_agent, ok_pngs) -> None:
    agent = make_agent()
    first = agent.bus.execute(fit_cmd(ok_pngs[:3], request_id="fit-reused"))
    other = agent.bus.execute(fit_cmd(ok_pngs[3:5], request_id="fit-reused"))  # other images
    assert first.ok and other.error is not None and other.error.kind == "bad_request"
    assert "fit-reused" in other.error.message and "already used" in other.error.message
    manifest = agent.bus.execute(parse_command("manifest", ROI, "test")).to_dict()
    assert manifest["datasets"]["ok"] == 3  # nothing of the second request stored


def test_a_journal_of_an_older_version_opens_and_its_results_replay(tmp_path) -> None:
    import sqlite3

    from agent.journal import Journal

    path = tmp_path / "requests.sqlite"
    with sqlite3.connect(path) as db:  # the schema before digests were kept
        db.execute(
            "CREATE TABLE results (command TEXT, request_id TEXT, at REAL, body TEXT,"
            " PRIMARY KEY (command, request_id))"
        )
        db.execute("INSERT INTO results VALUES ('fit_ok', 'r-1', ?, '{\"n\": 1}')", (time.time(),))
    journal = Journal(path)
    recorded = journal.get("fit_ok", "r-1")
    assert recorded is not None and recorded.body == {"n": 1} and recorded.same_request("any")
    journal.put("fit_ok", "r-2", {"n": 2}, "digest-2")
    again = journal.get("fit_ok", "r-2")
    assert again is not None and again.same_request("digest-2")
    assert not again.same_request("digest-3")
    journal.close()
