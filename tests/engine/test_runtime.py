"""The backbone runtime: the trial, the fidelity gate, artefacts on disk, the memory's
runtime. Small inputs (112 px, 8x8 tokens) keep every trial to seconds."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from agent.demo.discs import encode_png, make_set
from engine.backbone.artefacts import Artefacts, _valid
from engine.backbone.choose import Candidate, TrialSetup, candidates, trial_key
from engine.backbone.hardware import Hardware
from engine.backbone.weights import MODEL_NAME, build_vit
from engine.features import BackboneConfig, FeatureExtractor
from engine.patchcore import PatchCore, Sample
from tests.support import ROOT

SIZE = 112
AVX2_ONLY = Hardware("cpu", "test CPU (AVX2)", frozenset({"avx2", "fma"}))
WITH_BF16 = Hardware("cpu", "test CPU (AVX512-BF16)", frozenset({"avx2", "avx512_bf16"}))


def extractor(folder: Path | None, hardware: Hardware = AVX2_ONLY, **config) -> FeatureExtractor:
    values = {"weights": "random", "input_size": SIZE, "runtime_dir": folder, "trial_budget_s": 2}
    return FeatureExtractor(BackboneConfig(**{**values, **config}), hardware=hardware)


def other_model(seed: int) -> torch.nn.Module:
    """Other weights whose blocks count: random DINOv2 blocks start scaled by 1e-5
    (LayerScale) and change the features by little, so the scales are set to 1."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(
            MODEL_NAME, pretrained=False, num_classes=0, dynamic_img_size=True
        )
    for name, parameter in model.named_parameters():
        if name.endswith("gamma"):
            parameter.data.fill_(1.0)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def trial_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="module")
def auto(trial_dir: Path) -> FeatureExtractor:
    """One full trial on a simulated AVX2-only CPU, shared by the tests below."""
    fx = extractor(trial_dir)
    fx.load()
    return fx


@pytest.fixture(scope="module")
def discs() -> list[np.ndarray]:
    return [d.image for d in make_set(seed=5, n_ok=6, n_per_defect=1, size=SIZE)]


def test_auto_never_takes_a_precision_the_hardware_lacks() -> None:
    setup = TrialSetup(hardware=AVX2_ONLY)
    allowed, skipped = candidates(setup)
    assert Candidate("torch", "bf16") not in allowed
    assert any(r.precision == "bf16" and "no native bf16" in r.reason for r in skipped)
    assert (
        Candidate("torch", "bf16") in candidates(dataclasses.replace(setup, hardware=WITH_BF16))[0]
    )
    gpu = Hardware("cuda", "", frozenset(), gpu_model="test GPU")
    assert Candidate("torch", "fp16") in candidates(TrialSetup(hardware=gpu))[0]
    assert Candidate("torch", "fp16") not in candidates(TrialSetup(hardware=WITH_BF16))[0]
    # Set explicitly, bf16 is honoured even where it is emulated.
    pinned = TrialSetup(hardware=AVX2_ONLY, runtime="torch", precision="bf16")
    assert candidates(pinned)[0] == [Candidate("torch", "bf16")]


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: {model}
flags\t\t: fpu sse sse2 avx avx2 fma {extra}
"""


def test_bf16_is_tried_only_where_the_cpu_reports_it(tmp_path: Path, monkeypatch) -> None:
    """The capability read as on a real machine (its /proc/cpuinfo), not handed over:
    an AVX2-only CPU never trials torch bf16, one with AVX512-BF16 does."""
    from engine.backbone import hardware

    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "CPUINFO", cpuinfo)

    def bf16_row(extra: str) -> tuple[str, str]:
        cpuinfo.write_text(CPUINFO.format(model=f"test EPYC {extra}", extra=extra))
        config = BackboneConfig(
            weights="random",
            input_size=SIZE,
            runtime="torch",
            runtime_dir=tmp_path / "runtime",
            trial_budget_s=1,
        )
        fx = FeatureExtractor(config)  # no hardware given: detected
        fx.load()
        row = next(r for r in fx.choice.rows if r.precision == "bf16")
        return row.status, row.reason

    assert bf16_row("") == ("unsupported", "no native bf16 on this CPU")
    assert bf16_row("avx512f avx512_bf16")[0] in ("chosen", "passed", "failed_gate")
    assert hardware.detect("cpu").native("bf16")
    cpuinfo.write_text(CPUINFO.format(model="test Xeon", extra="amx_tile amx_bf16"))
    assert hardware.detect("cpu").native("bf16")


def test_the_trial_picks_a_gated_runtime_and_remembers_it(
    auto: FeatureExtractor, trial_dir: Path, discs: list[np.ndarray]
) -> None:
    choice = auto.choice
    assert choice.source == "trial"
    rows = {(r.runtime, r.precision): r for r in choice.rows}
    assert rows[("torch", "bf16")].status == "unsupported"
    chosen = rows[(choice.runtime, choice.precision)]
    assert chosen.status == "chosen" and chosen.cos_mean >= 0.999 and chosen.cos_min >= 0.99
    timed = [r for r in choice.rows if r.ms is not None]
    assert chosen.ms == min(r.ms for r in timed)
    assert rows[("onnxruntime", "int8")].status in ("chosen", "passed")
    assert choice.reason.startswith(f"{choice.runtime} {choice.precision}: ")
    record = json.loads(next(trial_dir.glob("choice-*.json")).read_text())
    assert (record["runtime"], record["precision"]) == (choice.runtime, choice.precision)

    again = extractor(trial_dir)
    again.load()
    assert again.choice.source == "remembered" and again.runtime_id == auto.runtime_id
    batch = np.stack(discs[:2])
    reference = extractor(None, runtime="torch", precision="fp32").extract(batch)
    got = again.extract(batch)
    cos = (
        (got * reference).sum(-1)
        / np.linalg.norm(got, axis=-1)
        / np.linalg.norm(reference, axis=-1)
    )
    assert cos.mean() >= 0.999 and cos.min() >= 0.99


def test_changes_that_matter_rerun_the_trial(auto: FeatureExtractor, monkeypatch) -> None:
    setup = TrialSetup(hardware=AVX2_ONLY, weights_sha256="a" * 64, input_size=SIZE)
    key = trial_key(setup)
    assert trial_key(dataclasses.replace(setup, weights_sha256="b" * 64)) != key
    assert trial_key(dataclasses.replace(setup, input_size=SIZE + 14)) != key
    assert trial_key(dataclasses.replace(setup, hardware=WITH_BF16)) != key
    real_version = __import__("importlib.metadata").metadata.version
    monkeypatch.setattr(
        "importlib.metadata.version",
        lambda name: "99.0" if name == "onnxruntime" else real_version(name),
    )
    assert trial_key(setup) != key


def test_a_wrong_export_fails_the_gate_and_the_next_candidate_serves(tmp_path: Path) -> None:
    """An ONNX file exported from other weights, planted where the agent's would be (its
    hash record intact): it loads, runs, and is refused by the gate."""
    stranger = other_model(99)
    fx = extractor(tmp_path, precision="fp32")  # auto runtime; no int8 to quantise
    fx_weights = extractor(None, runtime="torch", precision="fp32")
    fx_weights.load()
    Artefacts(tmp_path, stranger, fx_weights.weights.sha256, (-1,)).onnx("fp32")
    fx.load()
    rows = {(r.runtime, r.precision): r for r in fx.choice.rows}
    assert rows[("onnxruntime", "fp32")].status == "failed_gate"
    assert "under the gate" in rows[("onnxruntime", "fp32")].reason
    # OpenVINO's IR is converted from the same (wrong) file: refused as well.
    assert rows[("openvino", "fp32")].status == "failed_gate"
    assert fx.choice.runtime == "torch" and fx.choice.source == "trial"


def test_a_pinned_runtime_that_fails_the_gate_does_not_serve(tmp_path: Path) -> None:
    stranger = other_model(98)
    fx = extractor(tmp_path, runtime="onnxruntime", precision="fp32")
    reference = extractor(None, runtime="torch", precision="fp32")
    reference.load()
    Artefacts(tmp_path, stranger, reference.weights.sha256, (-1,)).onnx("fp32")
    with pytest.raises(Exception, match="no backbone runtime passed the fidelity gate"):
        fx.load()


def test_a_corrupt_artefact_is_rebuilt_and_gated_again(tmp_path: Path) -> None:
    first = extractor(tmp_path, runtime="onnxruntime", precision="int8")
    first.load()
    [artefact] = tmp_path.glob("*/trunk-int8.onnx")
    artefact.write_bytes(artefact.read_bytes()[:1000])  # a torn write, a bad sector
    again = extractor(tmp_path, runtime="onnxruntime", precision="int8")
    again.load()
    assert _valid(artefact) and again.runtime_id == "onnxruntime-int8"
    images = np.stack([np.full((SIZE, SIZE, 3), 90, np.uint8)])
    assert np.allclose(again.extract(images), first.extract(images), atol=1e-4)


KILL_SCRIPT = """
import sys
from pathlib import Path
from engine.backbone.artefacts import Artefacts
from engine.backbone.weights import build_vit
model, weights = build_vit("random")
print("ready", flush=True)
Artefacts(Path(sys.argv[1]), model, weights.sha256, (-1,)).onnx("fp32")
"""


def test_a_sigkill_while_an_artefact_is_written_leaves_no_half_file(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/.atomic-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        temp = list(tmp_path.glob("*/.atomic-*"))
        assert temp, "the export never started"
        while temp[0].exists() and temp[0].stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    final = list(tmp_path.glob("*/trunk-fp32.onnx"))
    assert not final or _valid(final[0])  # nothing, or a whole file vouched for
    model, weights = build_vit("random")
    artefacts = Artefacts(tmp_path, model, weights.sha256, (-1,))
    path = artefacts.onnx("fp32")  # built anew (or the whole one taken as it is)
    assert _valid(path) and artefacts.built == (["trunk-fp32.onnx"] if not final else [])


def test_a_missing_extra_is_reported_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    fx = extractor(tmp_path, runtime="openvino")
    with pytest.raises(Exception, match=r"openvino is not installed \(pip install"):
        fx.load()


def test_scores_of_one_memory_agree_across_the_runtimes_it_accepts(
    trial_dir: Path, auto: FeatureExtractor, discs: list[np.ndarray]
) -> None:
    """The exports the trial built are reused (each runtime pinned): no new export."""
    torch_fx = extractor(None, runtime="torch", precision="fp32")
    memory = PatchCore(torch_fx).fit([Sample.from_bytes(encode_png(d)) for d in discs[:5]], 0.2)
    assert memory.info.runtime == "torch-fp32"
    reference = [p.score for p in PatchCore(torch_fx).predict(memory, discs[5:])]
    for runtime, precision in (
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("openvino", "fp32"),
    ):
        fx = extractor(trial_dir, runtime=runtime, precision=precision)
        scores = [p.score for p in PatchCore(fx).predict(memory, discs[5:])]
        # One feature space, but embeddings cached apart: close is not equal.
        assert fx.feature_id == torch_fx.feature_id and fx.cache_id != torch_fx.cache_id
        assert np.allclose(scores, reference, rtol=1e-3, atol=1e-4), (runtime, precision)


def test_a_start_reuses_the_choice_until_weights_size_or_a_library_change(
    tmp_path: Path, monkeypatch
) -> None:
    """Each start, not only the key: a remembered choice serves the next start; other
    weights, another input size or another library version run the gate again (and other
    weights or libraries export anew)."""
    folder = tmp_path / "runtime"
    pinned = {"runtime": "onnxruntime", "precision": "fp32"}  # one candidate: gated, untimed

    def started(**config) -> str:
        fx = extractor(folder, **{**pinned, **config})
        fx.load()
        return fx.choice.source

    assert started() == "settings"  # the first start gates it
    assert started() == "remembered"
    assert started(input_size=SIZE + 14) == "settings"
    weights = tmp_path / "other.safetensors"
    state = other_model(7).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    assert started(weights=str(weights)) == "settings"
    real_version = __import__("importlib.metadata").metadata.version
    monkeypatch.setattr(
        "importlib.metadata.version",
        lambda name: "99.0" if name == "onnxruntime" else real_version(name),
    )
    assert started() == "settings"
    assert len(list(folder.glob("choice-*.json"))) == 4
    # Exports are stale too when a library changes: one folder per weights, one for the upgrade.
    assert len(list(folder.glob("*/trunk-fp32.onnx"))) == 3


def test_int8_is_calibrated_and_gated_on_the_stored_ok_images(
    tmp_path: Path, discs: list[np.ndarray], monkeypatch
) -> None:
    """The stored OK crops the agent hands over are the gate's batch and NNCF's
    calibration set; a start that reuses its choice does not read them."""
    from engine.backbone import artefacts as artefacts_module
    from engine.backbone.trial import reference_batch
    from engine.preprocess import normalise

    calibrated: list[list[np.ndarray]] = []

    def nncf_int8(ir: Path, model, calibration):  # records its set, keeps the fp32 graph
        import openvino as ov

        calibrated.append(calibration())
        return ov.Core().read_model(str(ir))

    monkeypatch.setattr(artefacts_module, "_nncf_int8", nncf_int8)
    reads: list[int] = []

    def stored_ok() -> list[np.ndarray]:
        reads.append(1)
        return discs[:2]

    def start() -> FeatureExtractor:
        config = BackboneConfig(
            weights="random",
            input_size=SIZE,
            runtime="openvino",
            precision="int8",
            runtime_dir=tmp_path,
            trial_budget_s=2,
        )
        fx = FeatureExtractor(config, stored_ok, hardware=AVX2_ONLY)
        fx.load()
        return fx

    assert start().runtime_id == "openvino-int8" and reads == [1]
    [batch] = calibrated
    assert len(batch) == 3  # two stored crops first, one generated image after them
    for got, disc in zip(batch[:2], discs[:2], strict=True):
        assert np.array_equal(got, normalise(disc[None])[0])
    assert np.array_equal(batch[2], reference_batch([], SIZE, n=1)[0])
    again = start()
    assert again.choice.source == "remembered" and reads == [1] and len(calibrated) == 1


def test_a_missing_extra_under_auto_is_a_row_and_another_runtime_serves(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    fx = extractor(tmp_path, precision="fp32")
    fx.load()
    rows = {(r.runtime, r.precision): r for r in fx.choice.rows}
    assert rows[("openvino", "fp32")].status == "unavailable"
    assert "pip install '.[openvino]'" in rows[("openvino", "fp32")].reason
    assert fx.choice.runtime in ("torch", "onnxruntime")


def test_a_probe_runs_one_trial_on_a_fresh_root(tmp_path: Path, monkeypatch) -> None:
    """``bdi-agent runtime probe`` on a root with nothing remembered: one trial, not a
    first start's trial and then the probe's own."""
    from engine.backbone import trial

    trials: list[int] = []
    real_trial = trial._trial

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        trials.append(1)
        return real_trial(*args, **kwargs)

    monkeypatch.setattr(trial, "_trial", counted)
    fx = extractor(tmp_path, runtime="onnxruntime", precision="fp32")
    assert fx.reselect().runtime == "onnxruntime" and len(trials) == 1
    assert fx.reselect().source == "settings" and len(trials) == 2  # the remembered ignored
