"""The systemd recipe of deploy/README.md, followed on this machine in a temporary root:
its ``install`` lines as written (paths moved under the temp root), the unit's user,
group, umask and environment, the state folder systemd would make. The agent then runs as
its own user, reads its config, and writes results, datasets and models that a camera
account in its group can read. The old recipe (root:root) gives one readable error.

Switching users needs root and ``setpriv``; without them only the umask check runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.demo.discs import encode_png, make_set
from tests.adapters.test_folders_support import wait_for
from tests.support import ROOT, cli_env

UNIT = ROOT / "deploy/systemd/bdi-agent.service"
SERVICE_ID, CAMERA_ID = 47311, 47312  # uids/gids no account of this machine uses
SETPRIV = shutil.which("setpriv")
as_root = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="switching users needs root and setpriv"
)


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if re.match(r"^[A-Z]\w+=", line):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def recipe_lines() -> list[str]:
    """The ``sudo install`` lines of deploy/README.md's systemd section."""
    text = (ROOT / "deploy/README.md").read_text(encoding="utf-8")
    section = text.split("## systemd", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("sudo install ")]


@dataclass
class Host:
    root: Path  # stands for /

    def path(self, absolute: str) -> str:
        return str(self.root) + absolute


@pytest.fixture
def host() -> Iterator[Host]:
    # Not pytest's tmp_path: its folders are 0700, so another user could not reach this.
    root = Path(tempfile.mkdtemp(prefix="bdi-host-", dir="/tmp"))
    root.chmod(0o755)
    yield Host(root)
    shutil.rmtree(root, ignore_errors=True)


def follow_recipe(host: Host, group: int) -> None:
    lines = recipe_lines()
    assert lines, "deploy/README.md lost its install lines"
    for line in lines:
        command = line.removeprefix("sudo ").replace("-g bdi-agent", f"-g {group}")
        command = command.replace("/etc/bdi-agent", host.path("/etc/bdi-agent"))
        subprocess.run(["bash", "-c", command], check=True, cwd=ROOT)


def service_python(uid: int) -> list[str] | None:
    """The interpreter the service user can run: this one, or (where this one lives in a
    folder only root may enter, as in a root-owned pyenv) the system's Python of the same
    version with this environment's packages. None when neither works."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, shutil.which(version)):
        if python is None:
            continue
        probe = subprocess.run(
            [str(SETPRIV), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python, "-c", ""],
            capture_output=True,
        )
        if probe.returncode == 0:
            return [python]
    return None


def service_env(host: Host, extra: dict[str, str]) -> dict[str, str]:
    """The unit's Environment= lines with their paths under the temp root, then ``extra``."""
    env = cli_env(Path("unused"), PYTHONPATH=f"{ROOT}:{sysconfig.get_paths()['purelib']}")
    for line in unit_settings()["Environment"]:
        for assignment in line.split():
            name, value = assignment.split("=", 1)
            env[name] = host.path(value) if value.startswith("/") else value
    env["HOME"] = host.path("/var/lib/bdi-agent")
    return {**env, **extra}


def as_user(uid: int, gid: int, groups: str = "--clear-groups") -> list[str]:
    return [str(SETPRIV), f"--reuid={uid}", f"--regid={gid}", groups]


@as_root
def test_the_service_user_reads_its_config_and_its_group_reads_results(host: Host) -> None:
    python = service_python(SERVICE_ID)
    if python is None:
        pytest.skip("no Python the service user may run")
    unit = unit_settings()
    follow_recipe(host, SERVICE_ID)
    state = Path(host.path("/var/lib/bdi-agent"))  # what StateDirectory= makes
    state.mkdir(parents=True)
    os.chown(state, SERVICE_ID, SERVICE_ID)
    state.chmod(int(unit["StateDirectoryMode"][0], 8))
    env = service_env(
        host,
        {
            "BDI_FOLDERS__ENABLED": "true",
            "BDI_FOLDERS__SETTLE_MS": "100",
            "BDI_FOLDERS__FIT_DEBOUNCE_S": "0.2",
            "BDI_FOLDERS__RESCAN_S": "2",
            "BDI_CORESET_MIN": "64",
        },
    )
    data = Path(env["BDI_DATA_ROOT"])
    agent = subprocess.Popen(
        [*as_user(SERVICE_ID, SERVICE_ID), *python, "-m", "agent", "run"],
        env=env,
        cwd=ROOT,
        umask=int(unit["UMask"][0], 8),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        for line in agent.stdout:
            if json.loads(line)["event"] == "folder adapter started":
                break
        camera = [*as_user(CAMERA_ID, CAMERA_ID, f"--groups={SERVICE_ID}"), *python, "-c"]
        drop = (
            "import json, os, sys; from pathlib import Path\n"
            "folder, name, source = Path(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
            "folder.mkdir(parents=True, exist_ok=True)\n"
            "(folder / (Path(name).stem + '.json')).write_text(json.dumps({'mm_per_px': 0.2}))\n"
            "(folder / (name + '.tmp')).write_bytes(Path(source).read_bytes())\n"
            "os.replace(folder / (name + '.tmp'), folder / name)\n"
        )
        images = host.root / "camera"
        images.mkdir()
        discs = make_set(seed=31, n_ok=3, size=224)
        for i, disc in enumerate(discs):
            (images / f"{i}.png").write_bytes(encode_png(disc.image))
        inbox = data / "inbox" / "Insp" / "R1"
        for i in range(2):
            subprocess.run(
                [*camera, drop, str(inbox / "ok"), f"ok{i}.png", str(images / f"{i}.png")],
                check=True,
                umask=0o002,  # what deploy/README.md asks of a camera account
            )
        wait_for(lambda: list((data / "models").rglob("*.npz")), 120, "the refit's memory")
        subprocess.run(
            [*camera, drop, str(inbox / "infer"), "part.png", str(images / "2.png")],
            check=True,
            umask=0o002,
        )
        results = wait_for(
            lambda: list((data / "processed").rglob("part.result.json")), 120, "the result"
        )
        written = [
            results[0],
            *(data / "datasets").rglob("*.png"),
            *(data / "datasets").rglob("*.json"),
            *(data / "models").rglob("*.npz"),
        ]
        for path in written:
            info = path.stat()
            assert info.st_uid == SERVICE_ID and info.st_gid == SERVICE_ID, path
            assert info.st_mode & stat.S_IRGRP and not info.st_mode & stat.S_IRWXO, (
                f"{path} is {stat.filemode(info.st_mode)}"
            )
            read = subprocess.run([*camera, f"open({str(path)!r}, 'rb').read()"])
            assert read.returncode == 0, f"the camera account cannot read {path}"
    finally:
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=120)
        print(out[-20000:], err[-5000:])  # pytest shows it when the test fails
    assert agent.returncode == 0, err


@as_root
def test_a_config_the_service_user_cannot_read_is_one_clear_error(host: Host) -> None:
    python = service_python(SERVICE_ID)
    if python is None:
        pytest.skip("no Python the service user may run")
    etc = Path(host.path("/etc/bdi-agent"))  # the recipe before groups: root:root
    subprocess.run(["install", "-d", "-m", "0750", str(etc)], check=True)
    subprocess.run(
        ["install", "-m", "0640", str(ROOT / "configs/agent.yaml"), str(etc / "agent.yaml")],
        check=True,
    )
    result = subprocess.run(
        [*as_user(SERVICE_ID, SERVICE_ID), *python, "-m", "agent", "run"],
        env=service_env(host, {}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"config file {etc / 'agent.yaml'} cannot be read by user {SERVICE_ID}" in lines[0]
    assert f"chgrp {SERVICE_ID} {etc}" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file; the test above covers it")
def test_an_unreadable_config_is_one_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("device: cpu\n")
    config.chmod(0)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run"],
        env=cli_env(tmp_path / "data", BDI_CONFIG=str(config)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "cannot be read by user" in result.stderr, result.stderr


def test_files_are_written_with_the_umask_not_0600(tmp_path: Path) -> None:
    """What the unit's UMask gives every file the agent writes (a fresh process, so the
    umask is its own)."""
    unit_umask = unit_settings()["UMask"][0]
    script = (
        "from pathlib import Path; import sys\n"
        "from engine.atomic import atomic_write_bytes\n"
        "atomic_write_bytes(Path(sys.argv[1]), b'x')\n"
    )
    target = tmp_path / "result.json"
    subprocess.run(
        [sys.executable, "-c", script, str(target)],
        check=True,
        env=cli_env(tmp_path),
        umask=int(unit_umask, 8),
    )
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~int(unit_umask, 8)
    assert target.stat().st_mode & stat.S_IRGRP
