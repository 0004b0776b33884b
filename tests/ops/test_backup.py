"""`bdi-agent backup` / `restore`: consistent snapshots of a live data root, safe restores."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.bootstrap import Agent
from agent.demo.discs import encode_png, make_set
from agent.ops import snapshot
from agent.ops.backup import backup
from agent.ops.errors import OpsError
from agent.ops.restore import restore
from agent.root_lock import LOCK_NAME
from engine.datasets import DatasetStore
from engine.keys import RoiKey
from engine.memory import Memory, MemoryInfo
from engine.store import ModelStore
from tests.ops.conftest import bdi, fit_roi, ops_settings, send, write_tar
from tests.support import cli_env

KEY = RoiKey.of("Insp", "R1")


def tiny_memory(version: str = "v1") -> Memory:
    """A small valid memory (no backbone needed) for the store-level tests."""
    bank = np.random.default_rng(0).standard_normal((32, 384)).astype(np.float16)
    info = MemoryInfo(version, "2025-01-01T00:00:00Z", 0.2, 32, 32, 0.02, 1.0, feature_id="f")
    return Memory(bank, np.zeros(32, dtype=np.int32), (16, 16), info)


def tiny_root(root: Path) -> ModelStore:
    models = ModelStore(root / "models")
    models.save_memory(KEY, tiny_memory())
    models.save_calibration(KEY, {"threshold": 0.5, "model_version": "v1", "mm_per_px": 0.2})
    png = encode_png(make_set(seed=3, n_ok=1, size=96)[0].image)
    DatasetStore(root / "datasets").add(KEY, "ok", png, {"mm_per_px": 0.2})
    return models


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def version_of(npz: bytes) -> str:
    with np.load(io.BytesIO(npz)) as stored:
        return str(json.loads(str(stored["metadata"][()]))["model_version"])


def assert_restores_readable(archive: Path, root: Path) -> ModelStore:
    """Restored into an empty root: every memory loads, has its calibration, and every
    sample it was fitted from is in the dataset."""
    report = restore(ops_settings(root), archive)
    assert report.sections[:2] == ["models", "datasets"], report
    models, datasets = ModelStore(root / "models"), DatasetStore(root / "datasets")
    assert models.roi_keys() == [KEY]
    memory = models.load_memory(KEY)
    assert memory is not None and models.load_calibration(KEY) is not None
    stored = {sample.sha256 for sample in datasets.list(KEY, "ok")}
    assert set(memory.info.sample_sha256) <= stored
    with sqlite3.connect(root / "journal" / "requests.sqlite") as db:
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] >= 2
    return models


def test_backup_during_a_running_fit_restores_to_a_readable_store(
    tmp_path: Path, make_agent: Callable[..., Agent], ok_pngs: list[bytes]
) -> None:
    data = tmp_path / "data"
    agent = make_agent(data)  # stays running: its journal is open during the backups
    fit_roi(agent, ok_pngs[:6])
    more = tmp_path / "more"
    more.mkdir()
    for i, png in enumerate(ok_pngs[6:12]):
        (more / f"{i:02d}.png").write_bytes(png)
    # The CLI refits the same ROI from 12 samples: its memory is replaced mid-backups.
    args = ["fit", str(more), "--role", "Insp", "--roi", "R1", "--mm-per-px", "0.2"]
    env = cli_env(data, BDI_MAX_BATCH="2", BDI_CORESET_MIN="256")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    started = threading.Event()
    log: list[str] = []

    def drain() -> None:  # keep reading stderr so the fit never blocks on a full pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if line.startswith("embedding:"):
                started.set()

    threading.Thread(target=drain, daemon=True).start()
    assert started.wait(120), "".join(log)
    settings = ops_settings(data)
    cli = bdi(["backup", str(tmp_path / "cli.tar.gz")], env, tmp_path)  # through the CLI
    assert cli.returncode == 0, cli.stderr
    assert "backup written" in cli.stdout
    archives, during = [tmp_path / "cli.tar.gz"], 0
    while len(archives) < 60:
        path = tmp_path / f"during-{len(archives)}.tar.gz"
        assert backup(settings, path).skipped == []
        archives.append(path)
        if proc.poll() is not None:
            break
        during += 1
    assert proc.wait(timeout=300) == 0, "".join(log)
    assert during >= 1, len(archives)  # a backup started and ended while the fit ran
    final = tmp_path / "after.tar.gz"
    backup(settings, final)
    for i, archive in enumerate(archives):
        names = members(archive)
        assert not any(".atomic-" in n for n in names) and "BACKUP.json" in names
        assert_restores_readable(archive, tmp_path / f"restored-{i}")
    restored = assert_restores_readable(final, tmp_path / "restored-final")
    memory = restored.load_memory(KEY)
    assert memory is not None and memory.info.n_samples == 12
    # The CLI's restore, and an agent on the restored root answers.
    back = bdi(["restore", str(final)], cli_env(tmp_path / "cli-restored"), tmp_path)
    assert back.returncode == 0, back.stderr
    assert "restored models, datasets" in back.stdout and "Insp" in back.stdout
    reborn = make_agent(tmp_path / "cli-restored")
    reply = send(
        reborn, "infer", role_id="Insp", roi_id="R1", mm_per_px=0.2, image=ok_pngs[0], heatmap=False
    )
    assert reply.to_dict()["threshold"] is not None


def test_a_memory_replaced_mid_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tiny_root(tmp_path)
    path = models.memory_path(KEY)
    original = snapshot.read_whole
    raced: list[Path] = []

    def refit_after_reading(p: Path):  # a refit lands right after the memory was read
        got = original(p)
        if p == path and not raced:
            raced.append(p)
            models.save_memory(KEY, tiny_memory("v2"))
        return got

    monkeypatch.setattr(snapshot, "read_whole", refit_after_reading)
    pair = snapshot.read_memory_pair(path)
    assert pair is not None and raced
    assert version_of(pair[0]) == "v2"  # the pair was taken again, after the refit


def test_temp_files_are_skipped_and_damaged_memories_reported(tmp_path: Path) -> None:
    models = tiny_root(tmp_path / "data")
    folder = models.model_dir(KEY)
    (folder / ".atomic-abc123.tmp").write_bytes(b"half a memory")
    (folder / "ZGFtYWdlZA__eA.npz").write_bytes(b"PK\x03\x04 not a zip")
    report = backup(ops_settings(tmp_path / "data"), tmp_path / "b.tar.gz")
    names = members(tmp_path / "b.tar.gz")
    assert not any(".atomic-" in n or "ZGFtYWdlZA" in n for n in names)
    assert len(report.skipped) == 1 and "ZGFtYWdlZA__eA.npz" in report.skipped[0]
    assert report.memories == 1 and any(n.endswith("_calib.json") for n in names)


def test_restore_refuses_a_non_empty_root_unless_forced(tmp_path: Path) -> None:
    tiny_root(tmp_path / "src")
    archive = tmp_path / "b.tar.gz"
    backup(ops_settings(tmp_path / "src"), archive)
    target = tmp_path / "target"
    (target / "models").mkdir(parents=True)
    (target / "models" / "old.npz").write_bytes(b"the line's own model")
    with pytest.raises(OpsError, match=r"not empty .*--force"):
        restore(ops_settings(target), archive)
    assert (target / "models" / "old.npz").is_file() and not (target / "datasets").exists()
    report = restore(ops_settings(target), archive, force=True)
    assert report.moved_aside is not None
    assert (report.moved_aside / "models" / "old.npz").read_bytes() == b"the line's own model"
    assert ModelStore(target / "models").roi_keys() == [KEY]


def test_restore_refuses_path_traversal(tmp_path: Path) -> None:
    evil = write_tar(
        tmp_path / "evil.tar.gz",
        {"models/fine.txt": b"ok", "models/../../escaped.txt": b"pwned"},
    )
    target = tmp_path / "deep" / "target"
    with pytest.raises(OpsError, match="unsafe member"):
        restore(ops_settings(target), evil)
    assert (
        not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()
    )
    assert not (target / "models").exists()
    # Staging removed; the root's lock file (held by the restore) stays, as agents leave it.
    assert [p.name for p in target.iterdir() if p.name != LOCK_NAME] == []
    with pytest.raises(OpsError, match="not a readable"):
        restore(ops_settings(target), _write(tmp_path / "x.tar.gz", b"not a tar"))
    with pytest.raises(OpsError, match="not a backup"):
        restore(ops_settings(target), write_tar(tmp_path / "other.tar.gz", {"etc/passwd": b"x"}))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_hand_made_tar_of_models_and_datasets_restores(tmp_path: Path) -> None:
    # Seed 003's upgrade step: "backup tar.gz de datasets/ y models/", often with the
    # data folder itself as the archive's top folder.
    tiny_root(tmp_path / "data")
    archive = tmp_path / "manual.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data" / "models", arcname="data/models")
        tar.add(tmp_path / "data" / "datasets", arcname="data/datasets")
    report = restore(ops_settings(tmp_path / "line"), archive)
    assert report.sections == ["models", "datasets"] and report.rois == ["default/Insp/R1"]
    assert DatasetStore(tmp_path / "line" / "datasets").count(KEY, "ok") == 1
