"""Security promises of the contract, tried against the real parts: ids and the data root.

Storage (section 4): no id, however hostile, names a path outside the data root, a live
agent keeps every id it is sent inside its data root, and stored ROIs list back under
their own ids.
"""

# Fixtures are imported from the adapter tests' modules.
# ruff: noqa: F811

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.demo.discs import encode_png, make_set
from engine.datasets import DatasetStore
from engine.errors import BadInput
from engine.keys import MAX_ID_BYTES, RoiKey, from_b64_name, split_base_name
from engine.memory import Memory, MemoryInfo, new_model_version
from engine.store import ModelStore
from tests.adapters.test_http_support import Server, serve  # noqa: F401 (fixture)
from tests.reliability.hostile import MM_PER_PX, SECURITY

HOSTILE_IDS = [
    "..",
    ".",
    "../../x",
    "/etc",
    "/etc/passwd",
    "a/b",
    "C:\\x",
    "..\\..\\y",
    "\\\\server\\share",
    "~",
    "$HOME",
    "%2e%2e%2f",
    "???",  # base64 "Pz8_": the "__" separator becomes "___"
    "a\u00bf",
    "x" * MAX_ID_BYTES,
    "\u00e9" * (MAX_ID_BYTES // 2),
    "x" * (MAX_ID_BYTES + 1),
    "",
    " ",
    "a\x00b",
    "line\nbreak",
    "\ud800",  # a lone surrogate, as JSON "\ud800" decodes
    "nul\x00",
    "\u202e\u2066rtl",
    "CON",
    "a" + "\u0301" * 40,
]
SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_-]+")
RECIPE = re.compile(r"[a-z0-9._-]{1,80}")


@pytest.fixture
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Hypothesis's caches go to this test's temp dir, not a .hypothesis/ in the repo."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    set_hypothesis_home_dir(None)


def _tiny_memory() -> Memory:
    info = MemoryInfo(
        model_version=new_model_version(),
        created_at="2026-01-01T00:00:00Z",
        mm_per_px=MM_PER_PX,
        n_embeddings=8,
        coreset_size=4,
        coreset_rate_requested=0.5,
        coreset_rate_applied=0.5,
        ok_scale=0.3,
    )
    bank = np.ones((4, 8), dtype=np.float16)
    return Memory(bank, np.zeros(4, dtype=np.int32), (2, 2), info)


def _decoded(name: str) -> str | None:
    """The id a file-name component encodes, None when it encodes none."""
    try:
        return from_b64_name(name)
    except ValueError:
        return None


def _split(stem: str) -> tuple[str, str] | None:
    try:
        return split_base_name(stem)
    except ValueError:
        return None


@functools.cache
def _png() -> bytes:
    return encode_png(make_set(seed=3, n_ok=1, size=96)[0].image)


def _path_problems(key: RoiKey, root: Path) -> list[str]:
    """Every path the engine derives for ``key``, checked and then really written."""
    problems: list[str] = []
    models, datasets = ModelStore(root / "models"), DatasetStore(root / "datasets")
    paths = {
        "memory": models.memory_path(key),
        "calibration": models.calibration_path(key),
        "ok": datasets.folder(key, "ok"),
        "ng": datasets.folder(key, "ng"),
    }
    for name, path in paths.items():
        if not path.resolve().is_relative_to(root.resolve()) or path.resolve() == root.resolve():
            problems.append(f"{name} path {path} is outside {root}")
        for part in path.relative_to(root).parts:
            if part in (".", "..") or len(part.encode()) > 255:
                problems.append(f"{name} path component {part!r}")
    model_parts = paths["memory"].relative_to(models.root).parts
    if len(model_parts) != 4 or model_parts[0] != "recipes":
        problems.append(f"memory path has {len(model_parts)} components: {model_parts}")
    else:
        _, recipe, model_dir, file = model_parts
        stem = file.removesuffix(".npz")
        if not RECIPE.fullmatch(recipe) or recipe != key.recipe_id:
            problems.append(f"recipe component {recipe!r}")
        if not SAFE_COMPONENT.fullmatch(model_dir) or _decoded(model_dir) != key.model_key:
            problems.append(f"model_key component {model_dir!r}")
        if not SAFE_COMPONENT.fullmatch(stem) or _split(stem) != (key.role_id, key.roi_id):
            problems.append(f"file name {file!r} does not give back the ids")
    sample_parts = paths["ok"].relative_to(datasets.root).parts
    if len(sample_parts) != 4 or [_decoded(p) for p in sample_parts[1:3]] != [
        key.role_id,
        key.roi_id,
    ]:
        problems.append(f"dataset folder {sample_parts} does not give back the ids")
    # Written for real, through the engine's own atomic writers, then read back.
    models.save_memory(key, _tiny_memory())
    models.save_calibration(key, {"threshold": 1.0})
    stored = datasets.add(key, "ok", _png(), {"mm_per_px": MM_PER_PX})
    if stored.image.parent != paths["ok"] or not paths["memory"].is_file():
        problems.append("the files were not written where the paths said")
    if (models.load_calibration(key) or {}).get("threshold") != 1.0:
        problems.append("the calibration does not read back")
    if [s.meta.get("role_id") for s in datasets.list(key, "ok")][-1:] != [key.role_id]:
        problems.append("the sample does not read back under its ids")
    return problems


@pytest.mark.reliability(SECURITY, "ids never escape the data root (hypothesis, any unicode)")
def test_no_id_names_a_path_outside_the_data_root(
    tmp_path: Path, hypothesis_home, record_property
) -> None:
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    root = tmp_path / "parent" / "data"
    sentinel = tmp_path / "parent" / "sentinel.txt"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("untouched")
    any_text = st.text(st.characters(exclude_categories=[]), max_size=40)  # surrogates too
    printable = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=30)
    path_like = st.lists(st.sampled_from(["..", ".", "/", "\\", "~", "a", "C:", "%2f"]), min_size=1,
                         max_size=12).map("".join)  # fmt: skip
    long_text = st.text(st.characters(exclude_categories=["Cc"]), min_size=20, max_size=95)
    ids = st.one_of(st.sampled_from(HOSTILE_IDS), any_text, printable, path_like, long_text)
    counts = {"tried": 0, "refused": 0}
    problems: list[str] = []

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,  # the same inputs on every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(role=ids, roi=ids, model_key=st.none() | ids, recipe=st.none() | ids)
    @example(role="???", roi="x", model_key=None, recipe=None)
    @example(role="../../x", roi="..", model_key="/etc", recipe="../../x")
    @example(role="x" * MAX_ID_BYTES, roi="x" * MAX_ID_BYTES, model_key=None, recipe="A" * 99)
    @example(role="\ud800", roi="x", model_key=None, recipe=None)
    def check(role: str, roi: str, model_key: str | None, recipe: str | None) -> None:
        counts["tried"] += 1
        try:
            key = RoiKey.of(role, roi, recipe, model_key)
        except BadInput:
            counts["refused"] += 1
            return
        except Exception as exc:  # anything else is a crash the caller would see as a 500
            problems.append(f"{role!r}/{roi!r}/{model_key!r}/{recipe!r}: {exc!r}")
            return
        if (key.role_id, key.roi_id) != (role, roi):
            problems.append(f"{role!r}/{roi!r} became {key.role_id!r}/{key.roi_id!r}")
        try:
            found = _path_problems(key, root)
        except Exception as exc:  # a write or read that failed for this id
            found = [repr(exc)]
        problems.extend(f"{role!r}/{roi!r}/{model_key!r}/{recipe!r}: {p}" for p in found)

    check()
    outside = [p for p in root.rglob("*") if not p.resolve().is_relative_to(root.resolve())]
    siblings = sorted(p.name for p in root.parent.iterdir())
    if outside or siblings != ["data", "sentinel.txt"] or sentinel.read_text() != "untouched":
        problems.append(f"outside the root: {outside[:3]}, next to it: {siblings}")
    record_property("tried", counts["tried"])
    record_property("failures", len(problems))
    record_property("lost", 0)
    record_property(
        "detail",
        f"{counts['tried'] - counts['refused']} id sets stored inside the root, "
        f"{counts['refused']} refused as bad_request",
    )
    assert not problems, problems[:10]


class WrongPremise(Exception):
    """The test's own inputs do not exercise the case: a failure, never an xfail."""


@pytest.mark.reliability(SECURITY, "stored ROIs list back under their own ids")
def test_stored_rois_list_back_under_their_own_ids(tmp_path: Path, record_property) -> None:
    """A role whose base64 ends in '_' ("???" is "Pz8_") must still be listed: the MQTT
    adapter republishes the state of every listed ROI on connect, and backup, restore and
    doctor list ROIs the same way."""
    models = ModelStore(tmp_path / "models")
    pairs = [("Inspection", "ROI_1"), ("???", "x"), ("a\u00bf", "b"), ("Disc??", "?!?"),
             ("ROI_1?", "ROI_1"), ("../../x", "..")]  # fmt: skip
    keys = [RoiKey.of(role, roi) for role, roi in pairs]
    if sum("___" in key.base_name for key in keys) < 4:
        raise WrongPremise([key.base_name for key in keys])
    for key in keys:
        models.save_memory(key, _tiny_memory())
    listed = set(models.roi_keys())
    missing = [k for k in keys if k not in listed]
    record_property("tried", len(keys))
    record_property("failures", len(missing))
    record_property("lost", 0)  # the files are there; the listing misses them
    record_property("detail", f"{len(keys) - len(missing)}/{len(keys)} stored ROIs listed back")
    assert not missing, [(k.role_id, k.roi_id) for k in missing]


# The live agent: ids that try to climb out, then everything outside the root compared.
ACCEPTED = [
    ("../../x", "../../x", {}),
    ("..", ".", {}),
    ("/etc", "passwd", {"recipe_id": "../../etc"}),
    ("a/b", "c/../../d", {"model_key": "../../m"}),
    ("C:\\x", "..\\..\\y", {}),
    ("x" * MAX_ID_BYTES, "\u00e9" * (MAX_ID_BYTES // 2), {}),
    ("???", "~", {}),
]
REFUSED = [("x" * (MAX_ID_BYTES + 1), "r"), ("a\x00b", "r"), (" ", "r"), ("line\nbreak", "r")]


def _snapshot(parent: Path, data_root: Path) -> dict[str, str]:
    """sha256 of every file under ``parent`` but outside ``data_root`` (dirs as 'dir')."""
    out = {}
    for path in sorted(parent.rglob("*")):
        if path == data_root or path.is_relative_to(data_root):
            continue
        out[str(path.relative_to(parent))] = (
            "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
    return out


@pytest.mark.reliability(SECURITY, "live agent: traversal ids in fit_ok/send_ng stay in the root")
def test_a_live_agent_keeps_every_id_inside_the_data_root(
    tmp_path: Path, serve, ok_pngs, record_property
) -> None:
    parent = tmp_path / "parent"
    data_root = parent / "data"
    for name, text in [("x", "x"), ("passwd", "root:x:0:0"), ("etc/passwd", "etc"), ("m", "m")]:
        (parent / name).parent.mkdir(parents=True, exist_ok=True)
        (parent / name).write_text(text)
    before = _snapshot(parent, data_root)
    server: Server = serve(data_root=data_root)
    client = server.client
    problems: list[str] = []
    tried = 0

    def upload(route: str, form: dict[str, str], images: list[bytes]) -> httpx.Response:
        # Hostile client-side file names too: the agent names stored samples itself.
        parts = [("images", ("../../evil.png", data, "image/png")) for data in images]
        return client.post(route, data=form, files=parts)

    for role, roi, extra in ACCEPTED:
        form = {"role_id": role, "roi_id": roi, "mm_per_px": str(MM_PER_PX), **extra}
        fit = upload("/fit_ok", form, ok_pngs[:2])
        ng = upload("/send_ng", form, ok_pngs[2:3])
        query = {"role_id": role, "roi_id": roi, **extra}
        scores = {"ok_scores": [0.1, 0.2], "ng_scores": [0.9]}
        calibration = client.post("/calibrate_ng", json={**query, **scores})
        manifest = client.get("/manifest", params=query)
        deleted = client.delete(
            "/datasets/file", params={**query, "label": "ok", "file": "../../x"}
        )
        tried += 5
        body = manifest.json()
        outcome = (
            fit.status_code,
            ng.status_code,
            calibration.status_code,
            manifest.status_code,
            body.get("datasets"),
            bool(body.get("memory", {}).get("exists")),
            deleted.status_code,
        )
        if outcome != (200, 200, 200, 200, {"ok": 2, "ng": 1}, True, 400):
            problems.append(f"{role!r}/{roi!r}: {outcome} {fit.text[:120]}")
    for role, roi in REFUSED:
        form = {"role_id": role, "roi_id": roi, "mm_per_px": str(MM_PER_PX)}
        response = upload("/fit_ok", form, ok_pngs[:1])
        tried += 1
        if response.status_code != 400 or response.json()["error"]["kind"] != "bad_request":
            problems.append(f"{role!r}: {response.status_code} {response.text[:120]}")
    surrogate = client.post(  # JSON may carry a lone surrogate ("\ud800"): no file name can
        "/calibrate_ng",
        content=b'{"role_id": "\\ud800", "roi_id": "r", "ok_scores": [0.1]}',
        headers={"content-type": "application/json"},
    )
    tried += 1
    if surrogate.status_code != 400:
        problems.append(f"lone surrogate id: {surrogate.status_code} {surrogate.text[:120]}")

    after = _snapshot(parent, data_root)
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        problems.append(f"outside the data root: {changed[:5]}")
    sent = {role for role, _, _ in ACCEPTED} | {roi for _, roi, _ in ACCEPTED}
    keys = {extra.get("model_key", roi) for _, roi, extra in ACCEPTED}
    stored = [p for p in data_root.rglob("*") if p.is_file()]
    for path in stored:
        rel = path.relative_to(data_root).parts
        if not path.resolve().is_relative_to(data_root.resolve()):
            problems.append(f"{path} resolves outside the root")
        elif rel[0] == "datasets" and not (
            len(rel) == 6 and {_decoded(p) for p in rel[2:4]} <= sent
        ):
            problems.append(f"sample {rel} is not under the b64 of the ids sent")
        elif rel[:2] == ("models", "recipes") and not (len(rel) == 5 and _decoded(rel[3]) in keys):
            problems.append(f"model {rel} is not under the b64 of a model key sent")
    record_property("tried", tried)
    record_property("failures", len(problems))
    record_property("lost", 0)
    record_property(
        "detail",
        f"{len(ACCEPTED)} hostile id sets stored and read back, {len(REFUSED) + 1} refused; "
        f"{len(stored)} files, all under the data root; nothing outside changed",
    )
    assert not problems, problems
