"""Settings: env beats YAML beats defaults; the seeds' legacy names; readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import LEGACY_NAMES, ConfigError, load_roi_defaults, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("BDI_", "BRAKEDISC_", "BACKEND_", "PATCHCORE_")) or name in (
            "INPUT_SIZE",
            "CORESET_RATE",
            "MODELS_DIR",
            "ENABLE_METRICS",
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no configs/agent.yaml here unless a test writes one


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_root == Path("data") and settings.models_root == Path("data/models")
    assert settings.backbone_weights == "hub" and settings.input_size == 448
    assert settings.mqtt.port == 1883 and settings.http.port == 8000
    assert settings.legacy_names_used == []


def test_env_beats_yaml_beats_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml(tmp_path, "coreset_rate: 0.05\nmqtt:\n  host: broker\n  port: 1884\n")
    monkeypatch.setenv("BDI_CONFIG", str(path))
    settings = load_settings()
    assert settings.coreset_rate == 0.05 and settings.mqtt.host == "broker"
    monkeypatch.setenv("BDI_MQTT__PORT", "1999")
    monkeypatch.setenv("BDI_CORESET_RATE", "0.07")
    settings = load_settings()
    assert settings.mqtt.port == 1999 and settings.mqtt.host == "broker"
    assert settings.coreset_rate == 0.07


EXAMPLES = {
    "BDI_BACKEND_HOST": ("0.0.0.0", lambda s: s.http.host == "0.0.0.0"),
    "BDI_BACKEND_PORT": ("8111", lambda s: s.http.port == 8111),
    "BDI_CORS_ORIGINS": ("a,b", lambda s: s.http.cors_origins == ["a", "b"]),
    "BACKEND_API_KEY": ("k", lambda s: s.api_key == "k"),
    "BACKEND_DEVICE": ("cpu", lambda s: s.device == "cpu"),
    "BACKEND_DATA_ROOT": ("/d", lambda s: s.data_root == Path("/d")),
    "BACKEND_ALLOW_ORIGINS": ("x", lambda s: s.http.cors_origins == ["x"]),
    "PATCHCORE_CORESET_RATIO": ("0.3", lambda s: s.coreset_rate == 0.3),
    "PATCHCORE_DISTANCE": ("l2", lambda s: s.metric == "l2"),
    "PATCHCORE_CORES": ("3", lambda s: s.threads == 3),
    "INPUT_SIZE": ("224", lambda s: s.input_size == 224),
    "CORESET_RATE": ("0.04", lambda s: s.coreset_rate == 0.04),
    "MODELS_DIR": ("/mm", lambda s: s.models_dir == Path("/mm")),
    "ENABLE_METRICS": ("false", lambda s: s.http.enable_metrics is False),
}


@pytest.mark.parametrize("name", sorted(LEGACY_NAMES))
def test_each_legacy_name_is_read_and_reported(name: str, monkeypatch) -> None:
    value, check = EXAMPLES[name]
    monkeypatch.setenv(name, value)
    settings = load_settings()
    assert check(settings) and settings.legacy_names_used == [name]


def test_the_seeds_bdi_names_are_current_names(monkeypatch) -> None:
    for name, value in [
        ("BDI_MODELS_DIR", "/m"),
        ("BDI_DATA_ROOT", "/d"),
        ("BDI_CORESET_RATE", "0.1"),
        ("BDI_SCORE_PERCENTILE", "95"),
        ("BDI_AREA_MM2_THR", "0.5"),
        ("BDI_API_KEY", "k"),
    ]:
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.models_root, s.data_root, s.coreset_rate) == (Path("/m"), Path("/d"), 0.1)
    assert (s.score_percentile, s.area_mm2_thr, s.api_key) == (95, 0.5, "k")
    assert s.legacy_names_used == []


def test_a_legacy_name_yields_to_its_new_name(monkeypatch) -> None:
    monkeypatch.setenv("CORESET_RATE", "0.04")
    monkeypatch.setenv("BDI_CORESET_RATE", "0.06")
    monkeypatch.setenv("BDI_BACKEND_PORT", "8111")
    monkeypatch.setenv("BDI_HTTP__PORT", "8222")
    settings = load_settings()
    assert settings.coreset_rate == 0.06 and settings.http.port == 8222
    assert settings.legacy_names_used == []


def test_brakedisc_prefix_is_the_old_bdi(monkeypatch) -> None:
    monkeypatch.setenv("BRAKEDISC_AGENT_ID", "line-3")
    monkeypatch.setenv("BRAKEDISC_MQTT__PORT", "1885")
    settings = load_settings()
    assert settings.agent_id == "line-3" and settings.mqtt.port == 1885
    assert sorted(settings.legacy_names_used) == ["BRAKEDISC_AGENT_ID", "BRAKEDISC_MQTT__PORT"]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("mqtt:\n  port: not-a-port\n", "mqtt.port"),
        ("mqtt:\n  hots: typo\n", "mqtt.hots"),
        ("coreset_rate: 2\n", "coreset_rate"),
        ("unknown_setting: 1\n", "unknown_setting"),
    ],
)
def test_a_bad_file_names_the_field(tmp_path: Path, monkeypatch, text: str, field: str) -> None:
    monkeypatch.setenv("BDI_CONFIG", str(write_yaml(tmp_path, text)))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings()


def test_unreadable_or_missing_files_are_clear(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BDI_CONFIG", str(write_yaml(tmp_path, "mqtt: [unclosed\n")))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings()
    monkeypatch.setenv("BDI_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_roi_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rois.yaml"
    path.write_text(
        "rois:\n  - role_id: Inspection\n    roi_id: R1\n    mm_per_px: 0.2\n"
        "    shape: {kind: circle, cx: 10, cy: 10, r: 5}\n"
    )
    defaults = load_roi_defaults(path)
    entry = defaults[("default", "Inspection", "R1")]
    assert entry.mm_per_px == 0.2 and entry.shape == {"kind": "circle", "cx": 10, "cy": 10, "r": 5}
    assert load_roi_defaults(tmp_path / "none.yaml") == {}
    path.write_text("rois:\n  - role_id: X\n    mm_per_px: -1\n")
    with pytest.raises(ConfigError, match=r"rois\.yaml"):
        load_roi_defaults(path)
