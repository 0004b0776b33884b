"""Agent settings (contract section 8).

Sources, strongest first: constructor arguments, ``BDI_*`` environment variables
(nested with ``__``, e.g. ``BDI_MQTT__HOST``), the seeds' legacy environment names,
the YAML file (``BDI_CONFIG``, default ``configs/agent.yaml``), defaults. A legacy
name is read only when its new name is not set; ``legacy_names_used`` lists them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from agent.config_checks import (
    Device,
    Layers,
    LogLevel,
    OptionalPath,
    OptionalTopicLevel,
    PathList,
    ReadableFile,
    SettingPath,
    StrList,
    TopicLevel,
    TopicLevels,
    Weights,
    error_line,
    unreadable,
)
from engine.errors import EngineError
from engine.keys import normalise_recipe_id

DEFAULT_CONFIG_FILE = Path("configs/agent.yaml")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttTls(Section):
    ca_file: ReadableFile = Field(None, description="CA bundle; enables TLS when set")
    cert_file: ReadableFile = Field(None, description="client certificate (mutual TLS)")
    key_file: ReadableFile = Field(None, description="client private key (mutual TLS)")
    insecure: bool = Field(False, description="skip host-name verification (lab only)")


class MqttSettings(Section):
    enabled: bool = Field(True, description="connect to the broker")
    host: str = Field("127.0.0.1", min_length=1, description="broker host")
    port: int = Field(1883, ge=1, le=65535, description="broker port")
    username: str | None = Field(None, description="broker user")
    password: str | None = Field(None, description="broker password")
    tls: MqttTls = Field(default_factory=MqttTls)
    topic_prefix: TopicLevels = Field("bdi", description="topics are <prefix>/<agent_id>/...")
    shared_group: OptionalTopicLevel = Field(None, description="share infer topics in this group")
    pool: OptionalTopicLevel = Field(
        None, description="shared infer topics are <prefix>/<pool>/cmd/...; default: shared_group"
    )
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive")
    session_expiry_s: int = Field(3600, ge=0, description="broker keeps our session this long")
    result_expiry_s: int = Field(300, ge=1, description="message expiry of replies")
    heatmap_max_bytes: int = Field(256 * 1024, ge=1024, description="heatmap PNG size cap")
    stats_interval_s: float = Field(30.0, gt=0, description="period of the stats topic")
    spool_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="disk spool cap")
    repeat_cache_bytes: int = Field(
        32 * 1024 * 1024, ge=0, description="replies kept to answer repeated reads"
    )
    image_roots: PathList = Field(default_factory=list, description="roots for image_path")


class FolderSettings(Section):
    enabled: bool = Field(True, description="watch <data_root>/inbox")
    polling: bool = Field(False, description="polling observer (network shares)")
    settle_ms: int = Field(300, ge=0, description="size+mtime must be stable this long")
    rescan_s: float = Field(60.0, gt=0, description="period of the inbox rescan")
    fit_debounce_s: float = Field(5.0, ge=0, description="quiet time before a refit")
    dataset_roots: PathList = Field(default_factory=list, description="GUI dataset roots")
    retention_days: int = Field(
        0, ge=0, description="days processed/ and failed/ are kept; 0: forever"
    )


class HttpSettings(Section):
    enabled: bool = Field(True, description="serve the HTTP API")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="bind port (0: any free port)")
    cors_origins: StrList = Field(default_factory=lambda: ["*"], description="CORS origins")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="request body cap")
    enable_metrics: bool = Field(True, description="serve /metrics")


class OpcuaSettings(Section):
    enabled: bool = Field(False, description="serve OPC UA (contract section 10)")
    host: str = Field("127.0.0.1", description="bind address; anonymous only on loopback")
    port: int = Field(4840, ge=0, le=65535, description="bind port (0: any free port)")
    username: str | None = Field(None, description="user required off loopback")
    password: str | None = Field(None, description="that user's password")
    cert_file: Path | None = Field(None, description="server certificate (DER or PEM)")
    key_file: Path | None = Field(None, description="server private key (PEM)")
    allow_insecure: bool = Field(False, description="anonymous, unencrypted off loopback")
    image_roots: PathList = Field(default_factory=list, description="roots for Inspect paths")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BDI_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    agent_id: TopicLevel = Field(default_factory=socket.gethostname, description="topic namespace")
    data_root: SettingPath = Field(Path("data"), description="models, datasets, inbox, spool")
    models_dir: OptionalPath = Field(None, description="default <data_root>/models")
    backbone_weights: Weights = Field("hub", description="file path | hub | random")
    device: Device = Field("auto", description="auto | cpu | cuda | cuda:N")
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto", description="backbone runtime; auto: the fastest that passes the fidelity gate"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto", description="backbone precision; auto: those the hardware runs natively"
    )
    runtime_dir: OptionalPath = Field(
        None, description="exported backbones and runtime choices; default <models>/runtime"
    )
    runtime_trial_s: float = Field(
        30.0, gt=0, le=600, description="timing budget of the runtime trial at first start"
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for torch")
    input_size: int = Field(448, ge=14, le=2048, description="long side fed to the backbone")
    layers: Layers = Field(default_factory=lambda: [-1], description="ViT blocks used")
    coreset_rate: float = Field(0.02, gt=0, le=1, description="PatchCore coreset rate")
    coreset_min: int = Field(1024, ge=1, description="coreset lower clamp (patches)")
    coreset_max: int = Field(20_000, ge=1, description="coreset upper clamp (patches)")
    projection_dim: int = Field(128, ge=8, description="coreset random projection dims")
    metric: Literal["cosine", "l2"] = Field("cosine", description="patch distance")
    blur_sigma: float = Field(4.0, ge=0, description="heatmap Gaussian sigma (px)")
    score_percentile: float = Field(99.0, gt=0, le=100, description="OK percentile")
    area_mm2_thr: float = Field(0.0, ge=0, description="smallest region kept (mm^2)")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="image size cap")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="image pixel cap")
    max_batch: int = Field(8, ge=1, le=64, description="images per backbone pass")
    max_batch_items: int = Field(64, ge=1, le=256, description="items per infer_batch")
    max_batch_pixels: int = Field(64_000_000, ge=1024, description="pixels per infer_batch")
    queue_size: int = Field(64, ge=1, description="commands waiting; beyond: busy")
    api_key: str | None = Field(None, description="X-API-Key required when set")
    log_level: LogLevel = Field("INFO", description="DEBUG | INFO | WARNING | ERROR")
    rois_file: SettingPath = Field(Path("configs/rois.yaml"), description="per-ROI defaults")
    alert_consecutive: int = Field(3, ge=1, description="anomalies in a row that alert")
    recent_max: int = Field(50, ge=0, description="recent verdicts kept with their images")
    recent_max_bytes: int = Field(
        32 * 1024 * 1024, ge=0, description="byte cap of the recent verdicts' images"
    )
    events_backlog_bytes: int = Field(
        1024 * 1024, ge=0, description="events kept for Last-Event-ID resume (bytes)"
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    folders: FolderSettings = Field(default_factory=FolderSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    opcua: OpcuaSettings = Field(default_factory=OpcuaSettings)
    legacy_names_used: list[str] = Field(default_factory=list, exclude=True)

    @model_validator(mode="after")
    def _coreset_bounds(self) -> Settings:
        if self.coreset_min > self.coreset_max:
            raise ValueError(
                f"coreset_min ({self.coreset_min}) must not exceed coreset_max ({self.coreset_max})"
            )
        return self

    @property
    def models_root(self) -> Path:
        return self.models_dir or self.data_root / "models"

    @property
    def runtime_root(self) -> Path:
        return self.runtime_dir or self.models_root / "runtime"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            LegacyEnvSource(settings_cls),
            YamlFileSource(settings_cls),
        )


# Legacy environment name -> settings path. BRAKEDISC_<X> is read as BDI_<X>. The seeds'
# BDI_MODELS_DIR, BDI_DATA_ROOT, BDI_CORESET_RATE, BDI_SCORE_PERCENTILE, BDI_AREA_MM2_THR
# and BDI_API_KEY are current names already.
LEGACY_NAMES: dict[str, tuple[str, ...]] = {
    "BDI_BACKEND_HOST": ("http", "host"),
    "BDI_BACKEND_PORT": ("http", "port"),
    "BDI_CORS_ORIGINS": ("http", "cors_origins"),
    "BACKEND_API_KEY": ("api_key",),
    "BACKEND_DEVICE": ("device",),
    "BACKEND_DATA_ROOT": ("data_root",),
    "BACKEND_ALLOW_ORIGINS": ("http", "cors_origins"),
    "PATCHCORE_CORESET_RATIO": ("coreset_rate",),
    "PATCHCORE_DISTANCE": ("metric",),
    "PATCHCORE_CORES": ("threads",),
    "INPUT_SIZE": ("input_size",),
    "CORESET_RATE": ("coreset_rate",),
    "MODELS_DIR": ("models_dir",),
    "ENABLE_METRICS": ("http", "enable_metrics"),
}
LIST_FIELDS = {("http", "cors_origins")}


def _new_env_name(path: tuple[str, ...]) -> str:
    return "BDI_" + "__".join(part.upper() for part in path)


class LegacyEnvSource(PydanticBaseSettingsSource):
    """The seeds' names, only where the new name is unset."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole dict

    def __call__(self) -> dict[str, Any]:
        env = os.environ
        names = dict(LEGACY_NAMES)
        for key in env:
            if key.startswith("BRAKEDISC_"):
                field = key.removeprefix("BRAKEDISC_").lower()
                names[key] = tuple(field.split("__"))
        out: dict[str, Any] = {}
        used: list[str] = []
        for legacy, path in sorted(names.items()):
            if legacy not in env or _new_env_name(path) in env:
                continue
            value: Any = env[legacy]
            if path in LIST_FIELDS:
                value = [v.strip() for v in value.split(",") if v.strip()]
            target = out
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target.setdefault(path[-1], value)
            used.append(legacy)
        if used:
            out["legacy_names_used"] = used
        return out


class YamlFileSource(PydanticBaseSettingsSource):
    """``BDI_CONFIG`` (must exist when set) or ``configs/agent.yaml`` (optional)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        explicit = os.environ.get("BDI_CONFIG")
        path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if explicit:
                raise ConfigError(f"config file {path} (BDI_CONFIG) does not exist") from None
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(unreadable(path, "config file", exc)) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        return data


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


def load_settings(**overrides: Any) -> Settings:
    """Settings from every source; a bad value raises ``ConfigError`` naming the field."""
    source = os.environ.get("BDI_CONFIG") or str(DEFAULT_CONFIG_FILE)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [error_line(dict(error)) for error in exc.errors()]
        raise ConfigError(
            f"invalid settings (environment BDI_* or {source}):\n" + "\n".join(lines)
        ) from None
    except SettingsError as exc:  # a section given as one variable that is not JSON
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"invalid settings (environment BDI_*): {exc}{cause}") from None


class RoiDefaults(Section):
    role_id: str
    roi_id: str
    recipe_id: str = "default"
    mm_per_px: float | None = Field(None, gt=0)
    shape: dict[str, Any] | None = None


def load_roi_defaults(path: Path) -> dict[tuple[str, str, str], RoiDefaults]:
    """Per-ROI defaults keyed by (recipe_id, role_id, roi_id); an absent file is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(unreadable(path, "ROI defaults file", exc)) from None
    try:
        data = yaml.safe_load(text) or {}
        entries = [RoiDefaults(**entry) for entry in data.get("rois", [])]
        # Keyed by the recipe id every command gets ("Line A" is line_a); ids as written.
        return {(normalise_recipe_id(e.recipe_id), e.role_id, e.roi_id): e for e in entries}
    except (yaml.YAMLError, ValidationError, TypeError, AttributeError, EngineError) as exc:
        raise ConfigError(f"ROI defaults file {path} is invalid: {exc}") from None
