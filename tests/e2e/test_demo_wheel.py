"""The demo runs from the installed package, not from the repository (issue 14).

The wheel is built from a copy of the working tree (what git tracks or would track, so the
build writes nothing into the repository), installed with ``--no-deps`` into a fresh venv
outside the repository; that venv gets the dependencies already installed in the
development venv through a ``.pth`` line naming its site-packages (plain paths only: the
editable install's finder there is never activated, and the repository root is never on
the path). Everything then runs from a temporary working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("agent", "engine", "adapters")
TIMEOUT_S = 120


@dataclass(frozen=True)
class Installed:
    wheel: Path
    tree: Path  # the copy the wheel was built from
    python: Path
    bin: Path
    site_packages: Path
    dependencies: Path  # the development venv's site-packages, on the path by a .pth line
    cwd: Path
    env: dict[str, str]


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout


def _copy_tree(target: Path) -> None:
    """The files git tracks or would track (untracked ones not ignored), as they are now."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # tracked but deleted in the working tree: not there
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    assert not work.is_relative_to(ROOT), "the venv must live outside the repository"
    tree, dist, venv, cwd = work / "src", work / "dist", work / "venv", work / "cwd"
    _copy_tree(tree)
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    pip = [sys.executable, "-m", "pip"]
    # The build needs setuptools and wheel: those of this venv, no download.
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", tree, "-w", dist],
         work, pip_env)  # fmt: skip
    (wheel,) = dist.glob("*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", venv], work)
    python = venv / "bin" / "python"
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], work,
         pip_env)  # fmt: skip
    site_packages = Path(_run([python, "-c", PURELIB], work).strip())
    dependencies = Path(sysconfig.get_paths()["purelib"])  # this (development) venv's
    assert dependencies != ROOT and site_packages.is_relative_to(venv)
    (site_packages / "_development_dependencies.pth").write_text(f"{dependencies}\n")
    cwd.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("BDI_", "BRAKEDISC_"))
    }
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1")
    return Installed(wheel, tree, python, venv / "bin", site_packages, dependencies, cwd, env)


PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"

# Run in the installed venv: where each module came from, and a disc made by the demo line.
DEMO_PROBE = """
import json, sys
import agent, agent.cli, agent.demo.discs, agent.demo.line, agent.demo.main
import numpy as np
png = agent.demo.line.disc_png(seed=3, index=0, defect="rust")
open("disc.png", "wb").write(png)
image = agent.demo.discs.decode_png(png)
disc = agent.demo.discs.make_set(seed=4, n_ok=1, size=160)[0]
print(json.dumps({
    "files": [m.__file__ for m in (agent, agent.cli, agent.demo.discs, agent.demo.line,
                                   agent.demo.main)],
    "path": sys.path,
    "shape": list(image.shape),
    "set_shape": list(disc.image.shape),
    "dependencies": np.__file__,
}))
"""


def test_the_wheel_holds_every_module_and_file_of_the_packages(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    expected = {
        path.relative_to(installed.tree).as_posix()
        for package in PACKAGES
        for path in (installed.tree / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert "agent/demo/discs.py" in expected and "agent/demo/__main__.py" in expected
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks these package files (pyproject.toml): {missing}"


def test_the_demo_line_makes_discs_from_the_installed_package(installed: Installed) -> None:
    out = json.loads(_run([installed.python, "-c", DEMO_PROBE], installed.cwd, installed.env))
    for file in out["files"]:
        assert Path(file).is_relative_to(installed.site_packages), file
    for entry in out["path"]:  # "" is the working directory, a temporary one
        where = Path(entry or installed.cwd).resolve()
        assert where == installed.dependencies or not where.is_relative_to(ROOT), out["path"]
    assert not Path(out["dependencies"]).is_relative_to(installed.site_packages)
    disc = installed.cwd / "disc.png"
    assert disc.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert out["shape"][:2] == [224, 224] and out["set_shape"][:2] == [160, 160]


def test_the_commands_start_from_the_installed_package(installed: Installed) -> None:
    script = installed.bin / "bdi-agent"
    assert script.is_file() and str(installed.python.parent) in script.read_text()
    usage = _run([script, "--help"], installed.cwd, installed.env)
    assert usage.startswith("usage: bdi-agent") and "run" in usage
    demo = _run([installed.python, "-m", "agent.demo", "--help"], installed.cwd, installed.env)
    assert "usage:" in demo and "--mqtt-port" in demo
    where = "import agent.demo.__main__ as m, agent.cli as c; print(m.__file__); print(c.__file__)"
    for file in _run([installed.python, "-c", where], installed.cwd, installed.env).split():
        assert Path(file).is_relative_to(installed.site_packages), file
