"""Weights come from exactly the source named, never silently from another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from engine.backbone.weights import MODEL_NAME
from engine.errors import ModelUnavailable
from engine.features import BackboneConfig, FeatureExtractor


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (2, 56, 70, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def other_state() -> dict[str, torch.Tensor]:
    """A ViT-S/14 with weights different from the seeded random ones."""
    torch.manual_seed(123)
    model = timm.create_model(MODEL_NAME, pretrained=False, num_classes=0)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _features(weights: str, images: np.ndarray) -> tuple[np.ndarray, FeatureExtractor]:
    fx = FeatureExtractor(
        BackboneConfig(weights=weights, input_size=70, runtime="torch", precision="fp32")
    )
    return fx.extract(images), fx


def test_random_weights_are_labelled_and_reproducible(
    extractor: FeatureExtractor, images: np.ndarray
) -> None:
    assert extractor.weights.label == "random"
    features, fx = _features("random", images)
    assert features.shape == (2, 4, 5, 384) and features.dtype == np.float32
    assert fx.weights.sha256 == extractor.weights.sha256  # same seed in every process


@pytest.mark.parametrize("layout", ["timm-pth", "meta-pth", "safetensors"])
def test_weights_files_in_each_layout_load(
    tmp_path: Path, layout: str, images: np.ndarray, other_state: dict[str, torch.Tensor]
) -> None:
    if layout == "timm-pth":
        path = tmp_path / "dinov2_vits14.pth"
        torch.save(other_state, path)
    elif layout == "meta-pth":
        # Meta's checkpoints carry a mask token and may wrap the backbone in a trainer dict.
        meta = {f"backbone.{k}": v for k, v in other_state.items()}
        meta["backbone.mask_token"] = torch.zeros(1, 384)
        path = tmp_path / "dinov2_vits14_pretrain.pth"
        torch.save({"teacher": meta}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file(other_state, str(path))
    features, fx = _features(str(path), images)
    assert fx.weights.label == f"file:{path.name}"
    random_features, _ = _features("random", images)
    assert not np.allclose(features, random_features)


def test_layout_variants_give_identical_features(
    tmp_path: Path, images: np.ndarray, other_state: dict[str, torch.Tensor]
) -> None:
    torch.save(other_state, tmp_path / "a.pth")
    save_file(other_state, str(tmp_path / "b.safetensors"))
    a, fa = _features(str(tmp_path / "a.pth"), images)
    b, fb = _features(str(tmp_path / "b.safetensors"), images)
    assert fa.weights.sha256 == fb.weights.sha256 and np.array_equal(a, b)


def test_unusable_weights_are_refused_with_a_reason(
    tmp_path: Path, other_state: dict[str, torch.Tensor]
) -> None:
    missing = FeatureExtractor(BackboneConfig(weights=str(tmp_path / "nope.pth")))
    with pytest.raises(ModelUnavailable, match=r"not found.*BDI_BACKBONE_WEIGHTS"):
        missing.load()
    truncated = tmp_path / "truncated.pth"
    torch.save(other_state, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(ModelUnavailable, match="could not be read"):
        FeatureExtractor(BackboneConfig(weights=str(truncated))).load()
    tiny = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    wrong = tmp_path / "vit_tiny.pth"
    torch.save(tiny.state_dict(), wrong)
    with pytest.raises(ModelUnavailable, match="not a DINOv2 ViT-S/14"):
        FeatureExtractor(BackboneConfig(weights=str(wrong))).load()
    patch16 = dict(other_state)
    patch16["patch_embed.proj.weight"] = torch.zeros(384, 3, 16, 16)
    torch.save(patch16, tmp_path / "patch16.pth")
    with pytest.raises(ModelUnavailable, match=r"\[384, 3, 16, 16\]"):
        FeatureExtractor(BackboneConfig(weights=str(tmp_path / "patch16.pth"))).load()


def test_hub_without_cache_or_network_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    fx = FeatureExtractor(BackboneConfig(weights="hub"))
    with pytest.raises(ModelUnavailable, match="Hugging Face cache"):
        fx.load()
    assert not fx.loaded
