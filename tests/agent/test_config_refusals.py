"""Every bad setting stops start-up with its field, its variable and the accepted values;
list settings are read as JSON or as comma lists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_settings
from agent.config_checks import unknown_env_names
from tests.support import cli_env

# variable, value, what the message must hold (field, variable, accepted values)
BAD_SETTINGS = [
    ("BDI_DEVICE", "gpu", ["device (BDI_DEVICE)", "auto, cpu, cuda or cuda:N"]),
    ("BDI_DEVICE", "cuda:x", ["device (BDI_DEVICE)", "cuda:N"]),
    ("BDI_PRECISION", "fp8", ["precision (BDI_PRECISION)", "'fp32'", "'int8'"]),
    ("BDI_RUNTIME", "tensorrt", ["runtime (BDI_RUNTIME)", "'onnxruntime'"]),
    ("BDI_LOG_LEVEL", "verbose", ["log_level (BDI_LOG_LEVEL)", "'DEBUG'", "'ERROR'"]),
    ("BDI_METRIC", "manhattan", ["metric (BDI_METRIC)", "'cosine' or 'l2'"]),
    ("BDI_LAYERS", "-1,20", ["layers (BDI_LAYERS)", "-12..11"]),
    ("BDI_LAYERS", "-1,11", ["layers (BDI_LAYERS)", "same"]),
    ("BDI_LAYERS", "[-1,", ["layers (BDI_LAYERS)", "not a JSON list"]),
    ("BDI_LAYERS", "last", ["layers.0 (BDI_LAYERS)", "valid integer"]),
    ("BDI_INPUT_SIZE", "big", ["input_size (BDI_INPUT_SIZE)", "valid integer"]),
    ("BDI_CORESET_RATE", "2", ["coreset_rate (BDI_CORESET_RATE)", "less than or equal to 1"]),
    ("BDI_CORESET_MIN", "50000", ["coreset_min (50000) must not exceed coreset_max"]),
    ("BDI_AGENT_ID", "line/1", ["agent_id (BDI_AGENT_ID)", "one MQTT topic level"]),
    ("BDI_AGENT_ID", "line+1", ["agent_id (BDI_AGENT_ID)", "wildcards"]),
    ("BDI_MQTT__PORT", "high", ["mqtt.port (BDI_MQTT__PORT)", "valid integer"]),
    ("BDI_MQTT__HOST", "", ["mqtt.host (BDI_MQTT__HOST)", "at least 1 character"]),
    ("BDI_MQTT__TOPIC_PREFIX", "$SYS", ["mqtt.topic_prefix (BDI_MQTT__TOPIC_PREFIX)", "$"]),
    ("BDI_MQTT__SHARED_GROUP", "a/b", ["mqtt.shared_group (BDI_MQTT__SHARED_GROUP)", "no /"]),
    ("BDI_MQTT__POOL", "#", ["mqtt.pool (BDI_MQTT__POOL)", "wildcards"]),
    ("BDI_MQTT__HOTS", "broker", ["mqtt.hots (BDI_MQTT__HOTS)", "not a setting"]),
    ("BDI_MQTT__TLS__INSECURE", "maybe", ["mqtt.tls.insecure", "valid boolean"]),
    ("BDI_HTTP__PORT", "70000", ["http.port (BDI_HTTP__PORT)", "65535"]),
    ("BDI_FOLDERS__RETENTION_DAYS", "-1", ["folders.retention_days", "greater than or equal"]),
    ("BDI_FOLDERS__SETTLE_MS", "soon", ["folders.settle_ms (BDI_FOLDERS__SETTLE_MS)", "integer"]),
    # An empty line in an env file would put the data in the folder the agent started in.
    ("BDI_DATA_ROOT", "", ["data_root (BDI_DATA_ROOT)", "must not be empty"]),
    ("BDI_MODELS_DIR", " ", ["models_dir (BDI_MODELS_DIR)", "must not be empty"]),
    ("BDI_ROIS_FILE", "", ["rois_file (BDI_ROIS_FILE)", "must not be empty"]),
    ("BDI_BACKBONE_WEIGHTS", "huggingface", ["backbone_weights", "hub, random or the path"]),
    ("BDI_BACKBONE_WEIGHTS", "/models/vits14.onnx", ["(BDI_BACKBONE_WEIGHTS)", ".safetensors"]),
    (
        "BDI_MQTT__TLS__CA_FILE",
        "/nonexistent/ca.pem",
        ["mqtt.tls.ca_file (BDI_MQTT__TLS__CA_FILE)", "/nonexistent/ca.pem does not exist"],
    ),
    ("BDI_MQTT__TLS__KEY_FILE", "/", ["mqtt.tls.key_file", "is a folder, not a file"]),
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("BDI_", "BRAKEDISC_", "BACKEND_", "PATCHCORE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no configs/agent.yaml here


@pytest.mark.parametrize(("name", "value", "expected"), BAD_SETTINGS)
def test_each_bad_setting_is_refused_naming_field_and_values(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    message = str(refused.value)
    for fragment in expected:
        assert fragment in message, message
    assert "Traceback" not in message


def test_the_same_values_are_refused_from_the_yaml_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("device: gpu\nlog_level: verbose\nmqtt:\n  pool: a/b\n")
    monkeypatch.setenv("BDI_CONFIG", str(path))
    with pytest.raises(ConfigError) as refused:
        load_settings()
    message = str(refused.value)
    assert str(path) in message
    for field in ("device (BDI_DEVICE)", "log_level (BDI_LOG_LEVEL)", "mqtt.pool"):
        assert field in message, message


def test_lists_are_json_or_comma_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BDI_LAYERS", "-1,-2")
    monkeypatch.setenv("BDI_MQTT__IMAGE_ROOTS", "/srv/img")
    monkeypatch.setenv("BDI_FOLDERS__DATASET_ROOTS", '["/srv/gui/a", "/srv/gui/b"]')
    monkeypatch.setenv("BDI_HTTP__CORS_ORIGINS", "https://gui.plant, https://qa.plant")
    settings = load_settings()
    assert settings.layers == [-1, -2]
    assert settings.mqtt.image_roots == [Path("/srv/img")]
    assert settings.folders.dataset_roots == [Path("/srv/gui/a"), Path("/srv/gui/b")]
    assert settings.http.cors_origins == ["https://gui.plant", "https://qa.plant"]


def test_case_is_forgiven_where_it_carries_no_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BDI_LOG_LEVEL", "debug")
    monkeypatch.setenv("BDI_DEVICE", "CUDA:1")
    monkeypatch.setenv("BDI_BACKBONE_WEIGHTS", "Hub")
    settings = load_settings()
    assert settings.log_level == "DEBUG" and settings.device == "cuda:1"
    assert settings.backbone_weights == "hub"


def test_files_named_by_settings_are_taken_as_they_are(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A checkpoint that is not there yet is no start-up refusal (the agent starts and its
    health says how to provide it); a TLS file that is there passes."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not parsed here")
    monkeypatch.setenv("BDI_BACKBONE_WEIGHTS", str(tmp_path / "later.safetensors"))
    monkeypatch.setenv("BDI_MQTT__TLS__CA_FILE", str(ca))
    settings = load_settings()
    assert settings.backbone_weights == str(tmp_path / "later.safetensors")
    assert settings.mqtt.tls.ca_file == ca


def test_unknown_top_level_names_are_reported() -> None:
    environ = {"BDI_DEVIC": "cpu", "BDI_DEVICE": "cpu", "BDI_CONFIG": "x", "BDI_BACKEND_PORT": "1"}
    unknown = unknown_env_names(environ, {"device"}, {"BDI_BACKEND_PORT"})
    assert unknown == ["BDI_DEVIC"]


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("BDI_DEVICE", "gpu", "device (BDI_DEVICE)"),
        ("BDI_LAYERS", "-1,99", "layers"),
        ("BDI_MQTT__TLS__CA_FILE", "/nonexistent/ca.pem", "mqtt.tls.ca_file"),
    ],
)
def test_run_refuses_at_start_with_one_message(
    tmp_path: Path, name: str, value: str, field: str
) -> None:
    """The real start: exit status 2, the field on stderr, nothing on stdout (no log line:
    nothing was started)."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run"],
        env=cli_env(tmp_path / "data", **{name: value}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert field in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing was written either
