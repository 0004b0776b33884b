"""`bdi-agent weights import/show`: checked checkpoints become the data root's default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.bootstrap import build_engine
from agent.config import Settings
from agent.ops.errors import OpsError
from agent.ops.weights import describe_weights, effective_weights, import_weights
from tests.ops.conftest import bdi
from tests.support import cli_env


def settings_for(data_root: Path, **values: Any) -> Settings:
    return Settings(data_root=data_root, input_size=224, **values)


@pytest.fixture
def no_weights_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BDI_BACKBONE_WEIGHTS", raising=False)


def test_every_layout_imports_and_becomes_the_agents_default(
    tmp_path: Path, checkpoints: dict[str, Path], no_weights_env: None, monkeypatch
) -> None:
    data = tmp_path / "data"
    assert effective_weights(settings_for(data)).spec == "hub"  # nothing imported yet
    first = import_weights(checkpoints["timm-pth"], data)
    # Another file under the same name (here: the Meta layout) must not overwrite it.
    same_name = tmp_path / "usb" / checkpoints["timm-pth"].name
    same_name.parent.mkdir()
    same_name.write_bytes(checkpoints["meta-pth"].read_bytes())
    second = import_weights(same_name, data)
    last = import_weights(checkpoints["safetensors"], data)
    assert [first["layout"], second["layout"], last["layout"]] == ["timm", "meta", "timm"]
    assert first["file"] == same_name.name and second["file"] != first["file"]
    for record, source in ((first, checkpoints["timm-pth"]), (second, same_name)):
        copied = data / "weights" / record["file"]
        assert copied.read_bytes() == source.read_bytes()
        assert copied.with_name(copied.name + ".sha256").read_text().split() == [
            record["sha256"],
            copied.name,
        ]
    # The same tensors in three layouts: one hash, the one memories are bound to.
    assert first["tensor_sha256"] == second["tensor_sha256"] == last["tensor_sha256"]
    default = json.loads((data / "weights" / "default.json").read_text())
    assert default == last and default["file"] == "model.safetensors"

    choice = effective_weights(settings_for(data))
    assert choice.source == "imported" and choice.spec == str(data / "weights" / last["file"])
    extractor = build_engine(settings_for(data)).extractor
    assert extractor.weights.label == "file:model.safetensors"
    assert extractor.weights.sha256 == last["tensor_sha256"]
    # An explicit setting still wins, hub included.
    assert effective_weights(settings_for(data, backbone_weights="random")).spec == "random"
    monkeypatch.setenv("BDI_BACKBONE_WEIGHTS", "hub")
    assert effective_weights(settings_for(data)).spec == "hub"
    monkeypatch.delenv("BDI_BACKBONE_WEIGHTS")
    # A damaged copy is reported, never loaded as if nothing happened.
    (data / "weights" / last["file"]).write_bytes(b"damaged")
    info = describe_weights(settings_for(data), load=False)
    assert "differs from the sha256 recorded at import" in info["error"]


def _save(path: Path, state: dict[str, Any]) -> Path:
    import torch

    torch.save(state, path)
    return path


def test_bad_files_are_refused_with_the_reason(
    tmp_path: Path, checkpoints: dict[str, Path], other_state: dict[str, Any]
) -> None:
    import timm
    import torch

    source = checkpoints["timm-pth"].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(source[: len(source) // 2])
    half_st = tmp_path / "truncated.safetensors"
    half_st.write_bytes(checkpoints["safetensors"].read_bytes()[:100_000])
    # timm would silently resample a 16-px patch embedding: the import must not.
    vits16 = _save(
        tmp_path / "vits16.pth",
        {**other_state, "patch_embed.proj.weight": torch.zeros(384, 3, 16, 16)},
    )
    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    wrong_arch = _save(tmp_path / "vit_tiny.pth", tiny.state_dict())
    nan = _save(
        tmp_path / "nan.pth", {**other_state, "norm.bias": torch.full((384,), float("nan"))}
    )
    not_a_dict = _save(tmp_path / "list.pth", [1, 2, 3])  # type: ignore[arg-type]
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    cases = {
        truncated: r"truncated\.pth could not be read",
        half_st: r"truncated\.safetensors could not be read",
        vits16: r"not a DINOv2 ViT-S/14.*patch_embed\.proj\.weight \[384, 3, 16, 16\] instead of",
        wrong_arch: r"not a DINOv2 ViT-S/14 checkpoint: 24 missing key\(s\): blocks\.0\.ls1"
        r".*wrong tensor\(s\): blocks\.0\.attn\.proj\.bias \[192\] instead of \[384\]",
        nan: r"norm\.bias holds NaN",
        not_a_dict: r"holds no state dict",
        onnx: r"expected a \.pth or \.safetensors",
        tmp_path / "absent.pth": r"is not a file",
    }
    for path, reason in cases.items():
        with pytest.raises(OpsError, match=reason):
            import_weights(path, tmp_path / "data")
    assert not (tmp_path / "data" / "weights" / "default.json").exists()


def test_cli_import_then_show(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    env = cli_env(tmp_path / "data", BDI_BACKBONE_WEIGHTS="<unset>")
    done = bdi(["weights", "import", str(checkpoints["meta-pth"])], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "meta layout" in done.stdout and "default" in done.stdout
    # A running agent loaded its backbone at start: the import says to restart it.
    assert "restart a running agent" in done.stdout and "/health stays 503" in done.stdout
    shown = bdi(["weights", "show", "--json"], env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    record = json.loads((tmp_path / "data" / "weights" / "default.json").read_text())
    assert body["source"] == "imported" and body["label"] == "file:dinov2_vits14_pretrain.pth"
    assert body["file_sha256"] == record["sha256"]
    assert body["tensor_sha256"] == record["tensor_sha256"]
    assert body["feature_id"].startswith(record["tensor_sha256"][:16])
    # A refusal is an exit code and one readable line, not a traceback.
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    refused = bdi(["weights", "import", str(tmp_path / "model.onnx")], env, tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "model.onnx: expected a .pth or .safetensors checkpoint" in refused.stderr
