"""Hostile input (contract sections 2, 3, 5, 6), ids and paths: whatever role, ROI, model
or recipe ids and whatever ``image_path`` a client sends, the agent answers with a contract
error or a result, never crashes, never answers ``internal``, and never touches a file
outside its data root or the configured image roots.
"""

# Fixtures come from tests/adapters/conftest.py.
# ruff: noqa: F811

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.bootstrap import bootstrap, build_engine
from agent.errors import AgentError
from agent.parsing import parse_command
from engine.features import FeatureExtractor
from tests.adapters.conftest import broker, extractor112, mqtt_agent  # noqa: F401
from tests.adapters.mqtt_support import Client
from tests.conftest import agent_settings
from tests.reliability import hostile
from tests.reliability.hostile import MM, REFUSALS, ROI, b64

# -- path traversal -----------------------------------------------------------------------


def traversal_files(sentinel: Path) -> list[str]:
    """dataset_delete ``file`` values aimed at the sentinel next to the data root."""
    return [
        "../../../../sentinel/a.png",
        "../" * 12 + "etc/passwd",
        str(sentinel / "a.png"),
        "..",
        ".",
        "OK_1.png/../../a.png",
        "..\\..\\a.png",
        "a.png\x00.png",
    ]


@pytest.mark.reliability("bad_input", "traversal ids in role/roi/model_key/recipe (live agent)")
def test_traversal_ids_are_refused_or_stay_under_the_data_root(
    tmp_path: Path, extractor112: FeatureExtractor, ok_pngs, record_property
) -> None:
    box = tmp_path / "box"
    data_root = box / "data"
    sentinel = box / "sentinel"
    (sentinel / "sub").mkdir(parents=True)
    for name in ("a.png", "a.json", "sub/b.png"):
        (sentinel / name).write_bytes(ok_pngs[2])
    (box / "etc").mkdir()
    before = hostile.tree_state(tmp_path)
    absolute_before = {p: Path(p).exists() for p in ("/abs", "/etc/passwd.png", "/b")}
    settings = agent_settings(data_root, input_size=112)
    core = build_engine(settings)
    core.extractor = extractor112
    agent = bootstrap(settings, core=core)
    agent.start(load_model=False)
    images = [b64(p) for p in ok_pngs[:2]]
    outcomes: Counter[str] = Counter()
    failures: list[str] = []

    def send(name: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The reply's contract dict, or None when the payload was refused at parse."""
        try:
            cmd = parse_command(name, payload, "test")
        except AgentError as error:
            outcomes[f"{name} refused ({error.kind})"] += 1
            if error.kind != "bad_request":
                failures.append(f"{name} {payload}: {error.kind}")
            return None
        except Exception as exc:  # the MQTT adapter would answer this "internal"
            outcomes[f"{name} crashed"] += 1
            failures.append(f"{name} {payload!r:.80}: {type(exc).__name__}: {exc}")
            return None
        reply = agent.bus.execute(cmd, timeout=300)
        outcomes[f"{name} {'ok' if reply.ok else reply.error.kind}"] += 1  # type: ignore[union-attr]
        return reply.to_dict()

    try:
        for field in ("role_id", "roi_id", "model_key", "recipe_id"):
            for value in hostile.TRAVERSAL_IDS:
                base = {"role_id": "R", "roi_id": "I", "mm_per_px": MM, field: value}
                fit = send("fit_ok", {**base, "images": images})
                if fit is None or "error" in fit:
                    if fit is not None and fit["error"]["kind"] != "bad_request":
                        failures.append(f"fit_ok {field}={value!r}: {fit['error']}")
                    continue
                # Accepted: everything else must find it again, under the data root.
                infer = send("infer", {**base, "image": images[0], "heatmap": False})
                ng = send("add_ng", {**base, "images": images[:1]})
                scores = {**base, "ok_scores": [0.1, 0.2], "ng_scores": [0.9]}
                calibration = send("calibrate_ng", scores)
                listing = send("dataset_list", base)
                manifest = send("manifest", base)
                for reply in (infer, ng, calibration, listing, manifest):
                    if reply is None or "error" in reply:
                        failures.append(f"{field}={value!r}: {reply}")
                if manifest and "error" not in manifest and manifest["datasets"]["ok"] < 2:
                    failures.append(f"{field}={value!r}: manifest {manifest['datasets']}")
                for file in traversal_files(sentinel):
                    deleted = send("dataset_delete", {**base, "label": "ok", "file": file})
                    if deleted is not None and deleted.get("deleted"):
                        failures.append(f"dataset_delete file={file!r} deleted something")
                send("dataset_clear", {**base, "label": "ng"})
    finally:
        agent.stop(timeout=30)
    after = hostile.tree_state(tmp_path, skip=data_root)
    changed = sorted(set(before.items()) ^ set(after.items()))
    failures += [f"outside the data root changed: {entry}" for entry in changed[:10]]
    failures += [f"escapes the data root: {p}" for p in hostile.escapes(data_root)]
    failures += [
        f"{p} appeared" for p, existed in absolute_before.items() if Path(p).exists() != existed
    ]
    tried = sum(outcomes.values())
    record_property("tried", tried)
    record_property("failures", len(failures))
    record_property("lost", 0)
    accepted = outcomes["fit_ok ok"]
    refused = sum(n for k, n in outcomes.items() if k.startswith("fit_ok") and k != "fit_ok ok")
    record_property(
        "detail",
        f"{accepted} id cases stored under the root, {refused} refused with bad_request, "
        f"sentinel untouched: {not changed}"
        + (f"; first failure: {failures[0][:200]}" if failures else ""),
    )
    assert not failures, failures[:10]
    assert accepted > 40 and refused > 20


def read_with_timeout(call: Callable[[], Any], timeout: float = 5.0) -> tuple[str, Any]:
    """("done", result) / ("error", exc), or ("hung", None) when the call blocked."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["done"] = call()
        except BaseException as exc:  # reported to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return "hung", thread
    return ("done", box["done"]) if "done" in box else ("error", box["error"])


def release(fifo: Path) -> None:
    """Unblock a reader stuck on a FIFO: open it for writing once and close it."""
    with contextlib.suppress(OSError):  # no reader waiting: nothing to release
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.reliability(
    "bad_input", "image_path: '..', relative, symlinks out, dirs, /proc, FIFOs"
)
def test_image_path_never_reads_outside_the_image_roots(
    broker, mqtt_agent, tmp_path: Path, ok_pngs, record_property
) -> None:
    root = tmp_path / "roots" / "images"
    outside = tmp_path / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    (root / "ok.png").write_bytes(ok_pngs[0])
    (root / "sub").mkdir()
    (outside / "secret.png").write_bytes(ok_pngs[1])
    os.mkfifo(outside / "trap.png")  # reading it blocks: a read outside the roots shows
    os.mkfifo(root / "pipe.png")
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "link_trap.png").symlink_to(outside / "trap.png")
    (root / "link_proc").symlink_to("/proc/self/environ")
    (root / "link_dir").symlink_to(outside)
    with open(root / "sparse.png", "wb") as handle:  # 30 MB on paper, nothing on disk
        handle.truncate(30 << 20)
    attempts = [
        "../outside/secret.png",
        "images/ok.png",
        f"{root}/../../outside/secret.png",
        f"{root}/link_out.png",
        f"{root}/link_trap.png",
        f"{root}/link_dir/secret.png",
        f"{root}/link_dir/trap.png",
        f"{root}/link_proc",
        f"{root}/sub",
        str(root),
        f"{root}/pipe.png",
        f"{root}/sparse.png",
        f"{root}/missing.png",
        "/proc/self/environ",
        "/proc/self/mem",
        "/etc/passwd",
        "/dev/zero",
        f"{root}/ok.png\x00",
        "\ud800",
        str(outside / "trap.png"),
    ]
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    for path in attempts:
        payload = {**ROI, "mm_per_px": MM, "image_path": path}
        state, value = read_with_timeout(
            lambda p=payload: parse_command(  # type: ignore[misc]
                "infer", p, "mqtt", [root], max_image_bytes=20 << 20
            )
        )
        if state == "hung":
            failures.append(f"{path!r}: blocked reading")
            release(outside / "trap.png")
            release(root / "pipe.png")
            value.join(5)
        elif state == "done":
            failures.append(f"{path!r}: accepted, read {len(value.image)} bytes")
        elif not isinstance(value, AgentError) or value.kind not in REFUSALS:
            failures.append(f"{path!r}: {type(value).__name__}: {value}")
        else:
            outcomes[value.kind] += 1
    allowed = parse_command(
        "infer", {**ROI, "mm_per_px": MM, "image_path": str(root / "ok.png")}, "mqtt", [root]
    )
    if getattr(allowed, "image", None) != ok_pngs[0]:
        failures.append("the allowed path was not read")
    # The same through a live agent's MQTT adapter: refusals on the result topic.
    mqtt_agent(broker.port, agent_id="paths", image_roots=[str(root)])
    plc = Client(broker.port, client_id="plc-paths", subscribe=("bdi/paths/result/#",))
    try:
        for path in [*attempts[:8], f"{root}/pipe.png", f"{root}/sparse.png", str(root / "ok.png")]:
            request_id = str(uuid.uuid4())
            body = {**ROI, "mm_per_px": MM, "image_path": path, "request_id": request_id}
            plc.publish("bdi/paths/cmd/infer", body)
            try:
                reply = plc.reply(request_id, timeout=30)
            except TimeoutError:
                failures.append(f"mqtt {path!r}: no reply (the MQTT thread is stuck)")
                break
            kind = reply.get("error", {}).get("kind")
            outcomes[f"mqtt {kind}"] += 1
            if path == str(root / "ok.png"):
                if kind != "not_fitted":  # read and decoded; this ROI has no memory
                    failures.append(f"mqtt {path}: {reply}")
            elif kind not in REFUSALS:
                failures.append(f"mqtt {path!r}: {reply}")
    finally:
        plc.close()
        release(outside / "trap.png")
        release(root / "pipe.png")
    record_property("tried", len(attempts) + 12)
    record_property("failures", len(failures))
    record_property("lost", 0)
    record_property(
        "detail",
        ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        + (f"; first failure: {failures[0][:200]}" if failures else ""),
    )
    assert not failures, failures
