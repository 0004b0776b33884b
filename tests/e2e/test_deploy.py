"""deploy/: what can be checked without Docker. The nginx site passes ``nginx -t``, the
systemd unit passes ``systemd-analyze verify``, the compose files and the Dockerfile say
what a plant expects of them. Tools that are missing skip their test; none is installed
here (``make test`` unpacks nginx into .venv/tools beforehand)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name: str, *extra: Path) -> str | None:
    """A binary on PATH, in /usr/sbin (not on a user's PATH), or in one of ``extra``."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", *map(str, extra)):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


# -- nginx ------------------------------------------------------------------------------


def test_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    nginx = tool("nginx", ROOT / ".venv/tools/nginx/usr/sbin/nginx")
    openssl = tool("openssl")
    if nginx is None or openssl is None:
        pytest.skip("nginx or openssl missing (make test unpacks nginx into .venv/tools)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-subj", "/CN=inspector.plant.local", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject],
        check=True,
        capture_output=True,
    )
    site = (DEPLOY / "nginx/bdi-agent.conf").read_text(encoding="utf-8")
    site = site.replace("/etc/ssl/bdi-agent/fullchain.pem", str(cert))
    site = site.replace("/etc/ssl/bdi-agent/privkey.pem", str(key))
    (tmp_path / "site.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # What /etc/nginx/nginx.conf gives a site: the http context, nothing else.
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp_paths}\n    include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr, result.stderr


def test_nginx_site_body_limit_matches_the_agent() -> None:
    from agent.config import HttpSettings

    site = (DEPLOY / "nginx/bdi-agent.conf").read_text(encoding="utf-8")
    limit = re.search(r"client_max_body_size (\d+)m;", site)
    assert limit is not None
    assert int(limit.group(1)) * 1024 * 1024 == HttpSettings().max_body_bytes
    assert "proxy_pass http://bdi_agent;" in site and "ssl_certificate " in site


# -- systemd ------------------------------------------------------------------------------


def test_systemd_unit_passes_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze missing")
    # verify wants ExecStart to exist: the checkout's place becomes a temp folder whose
    # .venv/bin/python is this interpreter.
    opt = tmp_path / "opt"
    (opt / ".venv/bin").mkdir(parents=True)
    (opt / ".venv/bin/python").symlink_to(sys.executable)
    units = tmp_path / "units"
    (units / "bdi-agent.service.d").mkdir(parents=True)
    unit = (DEPLOY / "systemd/bdi-agent.service").read_text(encoding="utf-8")
    (units / "bdi-agent.service").write_text(unit.replace("/opt/bdi-agent", str(opt)))
    gpu = (DEPLOY / "systemd/bdi-agent.service.d/gpu.conf").read_bytes()
    (units / "bdi-agent.service.d/gpu.conf").write_bytes(gpu)
    result = subprocess.run(
        [analyze, "verify", str(units / "bdi-agent.service")],
        capture_output=True,
        text=True,
        env={"SYSTEMD_UNIT_PATH": f"{units}:", "PATH": "/usr/bin:/bin"},
    )
    # verify also exits 0 on unknown keys and bad values: they only print a warning.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_unit_is_hardened_and_restarts() -> None:
    unit = (DEPLOY / "systemd/bdi-agent.service").read_text(encoding="utf-8")
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if re.match(r"^[A-Z]\w+=", line)
    )
    assert settings["User"] == "bdi-agent" and settings["ProtectSystem"] == "strict"
    assert settings["NoNewPrivileges"] == "yes" and settings["CapabilityBoundingSet"] == ""
    assert settings["Restart"] == "on-failure" and settings["KillSignal"] == "SIGTERM"
    assert "python -m agent run" in settings["ExecStart"]
    sysusers = (DEPLOY / "systemd/bdi-agent.sysusers.conf").read_text(encoding="utf-8")
    assert re.search(r"^u bdi-agent ", sysusers, re.MULTILINE)
    # The unit's files are made for its group: folders 0770, files 0660.
    assert settings["UMask"] == "0007" and settings["StateDirectoryMode"] == "0770"


def test_systemd_recipe_gives_the_config_to_the_service_group() -> None:
    """root:root 0750 would keep the service user out of its own config (the recipe is
    run for real, as its own user, by test_service_user.py where this machine allows)."""
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    section = readme.split("## systemd", 1)[1].split("\n## ", 1)[0]
    installs = [line for line in section.splitlines() if line.startswith("sudo install ")]
    assert any("/etc/bdi-agent/agent.yaml" in line for line in installs)
    for line in installs:
        assert "-o root -g bdi-agent" in line and re.search(r"-m 0(750|640) ", line), line


# -- docker --------------------------------------------------------------------------------


def compose(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_has_broker_and_agent_with_health_and_volumes() -> None:
    data = compose("compose.yaml")
    services = data["services"]
    assert set(services) == {"mosquitto", "agent"}
    broker = services["mosquitto"]
    assert broker["image"].startswith("eclipse-mosquitto:2")
    mounts = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in broker["volumes"]
    ]
    assert any(m.startswith("../configs/mosquitto.conf:/mosquitto/config/") for m in mounts)
    assert any(m.startswith("../configs/mosquitto.acl:") for m in mounts)
    assert any(m.endswith(":/mosquitto/config/passwd") for m in mounts)

    agent = services["agent"]
    assert agent["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / agent["build"]["context"] / agent["build"]["dockerfile"]).is_file()
    assert "VARIANT" in agent["build"]["args"]
    # Settings from env files only: an environment: block would beat deploy/agent.env.
    assert "environment" not in agent
    assert agent["env_file"] == [
        {"path": "./cell.env"},
        {"path": "./agent.env", "required": False},
    ]
    cell = env_file(DEPLOY / "cell.env")
    assert cell["BDI_MQTT__HOST"] == "mosquitto" and cell["BDI_HTTP__HOST"] == "0.0.0.0"
    targets = {v.split(":")[1] for v in agent["volumes"]}
    assert {"/data", "/models"} <= targets
    assert set(data["volumes"]) >= {v.split(":")[0] for v in agent["volumes"]}
    check = agent["healthcheck"]
    assert check["test"][0] == "CMD" and "/health" in " ".join(check["test"])
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)
    assert agent["ports"] == ["127.0.0.1:8000:8000"]  # TLS is nginx's job
    assert agent["depends_on"] == ["mosquitto"]
    for path in ("../configs/mosquitto.conf", "../configs/mosquitto.acl"):
        assert (DEPLOY / path).is_file()


def env_file(path: Path, commented: bool = False) -> dict[str, str]:
    """``NAME=value`` lines (``#NAME=value`` ones too with ``commented``)."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.removeprefix("#") if commented else line
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            name, value = line.split("=", 1)
            values[name] = value
    return values


def test_compose_works_without_deploy_env_and_its_env_files_hold_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agent.config import load_settings

    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    # A required ${VAR:?...} fails every compose command (run, ps...) without deploy/.env.
    assert ":?" not in text
    lines = {**env_file(DEPLOY / "cell.env"), **env_file(DEPLOY / "agent.env.example", True)}
    lines = {k: v for k, v in lines.items() if "<" not in v}  # placeholders
    for name in list(os.environ):
        if name.startswith("BDI_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name, value in lines.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()  # every name is a setting, every example value valid
    assert settings.mqtt.host == lines["BDI_MQTT__HOST"] and settings.agent_id == "line1-cell3"
    assert settings.folders.dataset_roots == [Path("/srv/gui/datasets")]


def test_compose_gpu_override_reserves_a_gpu() -> None:
    agent = compose("compose.gpu.yaml")["services"]["agent"]
    assert "environment" not in agent  # it would beat deploy/agent.env
    assert agent["build"]["args"]["VARIANT"] == "cuda"
    (device,) = agent["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_dockerfile_variants_user_volumes_health() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG VARIANT=cpu$", text, re.MULTILINE)
    assert "cpu)" in text and "cuda)" in text and "download.pytorch.org/whl/cpu" in text
    assert re.search(r"^USER bdi$", text, re.MULTILINE)
    assert 'VOLUME ["/data", "/models"]' in text
    assert re.search(r"^HEALTHCHECK .*\n.*/health", text, re.MULTILINE)
    assert 'ENTRYPOINT ["bdi-agent"]' in text and 'CMD ["run"]' in text
    # Every COPY source exists in the build context (the repository root) and is let
    # through by the Dockerfile's own .dockerignore.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for source in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, re.MULTILINE):
        for name in source.split():
            assert (ROOT / name).exists(), name
            assert f"!{name.rstrip('/')}" in ignore.replace("/\n", "\n"), name
