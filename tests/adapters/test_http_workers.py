"""The seeds' deployment: ``uvicorn adapters.http:app --workers 2`` on one data root.

Each worker is a whole agent; they share only the files. A TCP connection stays with the
worker that accepted it, and ``/stats`` names the worker (``boot_id``), so the test can
fit through one worker and infer through the other.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.adapters.socket_options import server_connections_nodelay
from tests.adapters.test_http_support import FORM, files, image

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def standalone_env(data_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BDI_DATA_ROOT": str(data_root),
        "BDI_BACKBONE_WEIGHTS": "random",
        "BDI_INPUT_SIZE": "224",
        "BDI_PRECISION": "fp32",
        "BDI_RUNTIME": "torch",
        "BDI_THREADS": "1",  # two workers on two cores
        "BDI_CORESET_MIN": "256",
        "BDI_MQTT__ENABLED": "false",
        "BDI_FOLDERS__ENABLED": "false",
        "BDI_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "adapters.http:app", "--workers", "2"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "uvicorn.log"
    with log.open("w") as sink:
        # cwd is a temp dir: no configs/agent.yaml of the repo's is picked up.
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=standalone_env(tmp_path / "data"),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(log.read_text()[-4000:])  # shown by pytest when the test failed


def worker_client(url: str) -> tuple[httpx.Client, str]:
    """A client on a new connection, once its worker's model is loaded; and the worker."""
    client = httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1))
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if client.get("/health").status_code == 200:
                return client, client.get("/stats").json()["boot_id"]
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            client.close()
            raise TimeoutError(f"no worker of {url} became ready")
        time.sleep(0.25)


def other_worker(url: str, boot_id: str) -> httpx.Client:
    for _ in range(60):
        client, other = worker_client(url)
        if other != boot_id:
            return client
        client.close()
    raise AssertionError("every connection went to the same worker")


def test_a_fit_through_one_worker_serves_an_infer_through_the_other(
    two_workers: str, ok_pngs
) -> None:
    first, first_id = worker_client(two_workers)
    fit = first.post("/fit_ok", data=FORM, files=files("images", ok_pngs[:4]))
    assert fit.status_code == 200, fit.json()
    second = other_worker(two_workers, first_id)
    try:
        verdict = second.post("/infer", data=FORM, files=image(ok_pngs[5]))
        assert verdict.status_code == 200, verdict.json()
        assert verdict.json()["model_version"] == fit.json()["model_version"]
        manifest = second.get("/manifest", params={k: FORM[k] for k in ("role_id", "roi_id")})
        assert manifest.json()["datasets"]["ok"] == 4
        # uvicorn's --workers socket has Nagle on unless the app turns it off (40 ms a
        # reply): both workers' accepted connections must have TCP_NODELAY.
        first.get("/stats").raise_for_status()
        second.get("/stats").raise_for_status()
        nodelay = server_connections_nodelay(int(two_workers.rsplit(":", 1)[1]))
        assert len(nodelay) >= 2 and all(nodelay), nodelay
    finally:
        first.close()
        second.close()


def test_importing_the_module_does_no_work(tmp_path: Path) -> None:
    code = (
        "import threading, adapters.http, adapters.http.adapter as h;"
        "assert threading.active_count() == 1, threading.enumerate();"
        "assert h._standalone is None"
    )
    env = standalone_env(tmp_path / "data")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=60)
    assert not (tmp_path / "data").exists()
