"""``restore`` is refused while an agent runs on the data root (the agent's shared lock),
and goes through once the agent has stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ops.errors import OpsError
from agent.ops.restore import restore
from agent.root_lock import lock_path
from tests.ops.conftest import ops_settings, write_tar
from tests.support import cli_env


def dataset_archive(path: Path) -> Path:
    """What ``tar czf b.tar.gz datasets`` of a line gives: one OK sample and its sidecar."""
    folder = "datasets/default/SW5zcA/UjE/ok"
    files = {f"{folder}/OK_1.png": b"\x89PNG not decoded by restore", f"{folder}/OK_1.json": b"{}"}
    return write_tar(path, files)


def test_restore_waits_for_the_agent_to_stop(tmp_path: Path) -> None:
    data = tmp_path / "data"
    archive = dataset_archive(tmp_path / "b.tar.gz")
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run"],
        env=cli_env(data),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert agent.stdout is not None
        for line in agent.stdout:  # the lock is held before "starting" is logged
            if json.loads(line)["event"] == "starting":
                break
        journal = data / "journal" / "requests.sqlite"
        assert journal.is_file()
        with pytest.raises(OpsError, match="an agent is running") as refused:
            restore(ops_settings(data), archive, force=True)
        assert str(lock_path(data)) in str(refused.value) and "stop it first" in str(refused.value)
        assert journal.is_file() and not list(data.glob(".pre-restore-*"))  # nothing moved
        assert not (data / "datasets").exists()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=60)
    assert agent.returncode == 0
    report = restore(ops_settings(data), archive, force=True)
    assert report.sections == ["datasets"] and report.files == 2
