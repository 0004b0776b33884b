import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.datasets import DatasetStore
from engine.errors import BadInput, CorruptArtifact
from engine.keys import RoiKey, b64_name, from_b64_name, normalise_recipe_id
from engine.manifest import roi_manifest
from engine.memory import Memory, MemoryInfo, new_model_version
from engine.store import ModelStore, read_memory

ROOT = Path(__file__).resolve().parents[2]


def _memory(rows: int = 50, fill: float | None = None) -> Memory:
    rng = np.random.default_rng(rows)
    bank = rng.normal(size=(rows, 16)) if fill is None else np.full((rows, 16), fill)
    info = MemoryInfo(
        model_version=new_model_version(),
        created_at="2026-01-01T00:00:00Z",
        mm_per_px=0.2,
        n_embeddings=rows * 4,
        coreset_size=rows,
        coreset_rate_requested=0.25,
        coreset_rate_applied=0.25,
        ok_scale=0.3,
    )
    return Memory(bank.astype(np.float16), np.arange(rows, dtype=np.int32) % 3, (4, 5), info)


def test_ids_round_trip_through_file_names() -> None:
    for value in ["Inspection_1", "a/b/../c", "ñandú 10%", "..", "x" * 90]:
        name = b64_name(value)
        assert "/" not in name and from_b64_name(name) == value


def test_ids_that_would_overflow_a_file_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="90 bytes"):
        RoiKey.of("r", "ñ" * 46)  # 92 bytes
    key = RoiKey.of("x" * 90, "y" * 90)
    ModelStore(tmp_path).save_calibration(key, {"threshold": 1.0})  # the longest name fits


def test_recipe_ids_are_normalised_and_last_is_reserved() -> None:
    assert normalise_recipe_id(None) == "default"
    assert normalise_recipe_id(" Disc-A/../B ") == "disc-a_.._b"
    with pytest.raises(BadInput):
        normalise_recipe_id("LAST")


def test_memory_round_trip_and_version_signature(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    key = RoiKey.of("Inspection", "ROI/1", recipe_id="Disc-A")
    assert store.load_memory(key) is None and store.signature(key) is None
    memory = _memory()
    path = store.save_memory(key, memory)
    assert path.parent.parent.name == b64_name("ROI/1") or path.parent.name == b64_name("ROI/1")
    assert "recipes/disc-a" in path.as_posix()
    loaded = store.load_memory(key)
    assert loaded is not None
    assert loaded.info == memory.info
    assert np.array_equal(loaded.bank, memory.bank) and loaded.bank.dtype == np.float16
    assert np.array_equal(loaded.sources, memory.sources) and loaded.token_shape == (4, 5)
    before = store.signature(key)
    store.save_memory(key, _memory())
    assert store.signature(key) != before


def test_calibration_round_trip_and_corrupt_files(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    key = RoiKey.of("r", "i")
    store.save_calibration(key, {"threshold": 0.5, "area_mm2_thr": 1.0})
    assert store.load_calibration(key) == {"threshold": 0.5, "area_mm2_thr": 1.0}
    store.calibration_path(key).write_text("{not json")
    with pytest.raises(CorruptArtifact):
        store.load_calibration(key)
    store.memory_path(key).parent.mkdir(parents=True, exist_ok=True)
    store.memory_path(key).write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CorruptArtifact):
        store.load_memory(key)


def test_legacy_layouts_are_read(tmp_path: Path) -> None:
    models = tmp_path / "models"
    emb = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    (models / "Insp" / "ROI_1").mkdir(parents=True)
    np.savez_compressed(
        models / "Insp" / "ROI_1" / "memory.npz",
        emb=emb,
        token_h=3,
        token_w=4,
        metadata=json.dumps({"mm_per_px": 0.1, "coreset_rate": 0.1}),
    )
    (models / "Insp" / "ROI_1" / "calib.json").write_text('{"threshold": 0.7}')
    np.savez_compressed(models / "Other_R2.npz", emb=emb[:10], token_h=2, token_w=5)
    store = ModelStore(models)
    nested = store.load_memory(RoiKey.of("Insp", "ROI 1"))  # legacy names were sanitised
    assert nested is not None and nested.token_shape == (3, 4) and nested.info.mm_per_px == 0.1
    assert np.allclose(nested.bank, emb)
    assert store.load_calibration(RoiKey.of("Insp", "ROI 1")) == {"threshold": 0.7}
    flat = store.load_memory(RoiKey.of("Other", "R2"))
    assert flat is not None and len(flat.bank) == 10 and flat.token_shape == (2, 5)
    assert store.load_memory(RoiKey.of("Other", "R2", recipe_id="b")) is None


WRITER = """
import sys
import numpy as np
from pathlib import Path
from engine.keys import RoiKey
from engine.memory import Memory, MemoryInfo
from engine.store import ModelStore
store, key = ModelStore(Path(sys.argv[1])), RoiKey.of("r", "i")
for version in range(1, 1000):
    bank = np.full((400_000, 64), version, np.float16)
    info = MemoryInfo(str(version), "", 0.2, 400_000, 400_000, 1.0, 1.0)
    store.save_memory(key, Memory(bank, np.zeros(400_000, np.int32), (4, 5), info))
    print(version, flush=True)
"""


def test_a_crash_mid_write_leaves_the_previous_model_readable(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay in (0.05, 0.13, 0.21):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "1"  # one complete model exists
        time.sleep(delay)  # ... and the next one is being written
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        memory = ModelStore(tmp_path).load_memory(RoiKey.of("r", "i"))
        assert memory is not None
        version = int(memory.info.model_version)
        assert np.all(memory.bank == version)  # whole, never a mix of two writes


def test_datasets_add_list_delete_clear(tmp_path: Path) -> None:
    datasets = DatasetStore(tmp_path / "datasets")
    key = RoiKey.of("Inspection", "Inspection_1")
    png = b"\x89PNG\r\n\x1a\nfake"
    first = datasets.add(key, "ok", png, {"mm_per_px": 0.2, "source": "test"})
    second = datasets.add(key, "ok", png, {"mm_per_px": 0.2, "source": "test"})
    assert first.image != second.image and first.image.name.startswith("OK_")
    assert first.image.suffix == ".png" and first.image.read_bytes() == png
    meta = json.loads(first.image.with_suffix(".json").read_text())
    assert (
        meta["mm_per_px"] == 0.2 and meta["role_id"] == "Inspection" and len(meta["sha256"]) == 64
    )
    assert [s.image for s in datasets.list(key, "ok")] == sorted([first.image, second.image])
    assert datasets.scale(key) == 0.2 and datasets.count(key, "ng") == 0
    with pytest.raises(BadInput):
        datasets.delete(key, "ok", "../../etc/passwd")
    with pytest.raises(BadInput):
        datasets.list(key, "maybe")
    assert datasets.delete(key, "ok", first.image.name) == 1
    assert datasets.delete(key, "ok", first.image.name) == 0
    assert datasets.clear(key, "ok") == 1 and datasets.list(key, "ok") == []


def test_manifest_reports_memory_calibration_and_counts(tmp_path: Path) -> None:
    models, datasets = ModelStore(tmp_path / "models"), DatasetStore(tmp_path / "datasets")
    key = RoiKey.of("r", "i")
    assert roi_manifest(models, datasets, key)["memory"] == {"exists": False}
    memory = _memory()
    models.save_memory(key, memory)
    models.save_calibration(key, {"threshold": 0.4})
    datasets.add(key, "ng", b"\x89PNG", {"mm_per_px": 0.2})
    manifest = roi_manifest(models, datasets, key)
    assert manifest["memory"]["model_version"] == memory.info.model_version
    assert manifest["memory"]["token_shape"] == [4, 5]
    assert manifest["calibration"] == {"threshold": 0.4}
    assert manifest["datasets"] == {"ok": 0, "ng": 1}
    # The runtime whose features built the memory; older memories were all torch fp32's.
    assert manifest["memory"]["runtime"] == "torch-fp32"
    models.save_memory(key, memory.with_info(runtime="onnxruntime-int8"))
    assert roi_manifest(models, datasets, key)["memory"]["runtime"] == "onnxruntime-int8"


def test_read_memory_refuses_a_malformed_bank(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, emb=np.zeros((3,)), token_h=1, token_w=1)
    with pytest.raises(CorruptArtifact):
        read_memory(path)
