"""`bdi-agent roi export/import`: a trained ROI moves from a lab PC to a line PC."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.bootstrap import Agent
from agent.demo.discs import encode_png
from agent.ops.errors import OpsError
from agent.ops.roi_transfer import export_roi, import_roi
from engine.features import BackboneConfig, FeatureExtractor
from engine.keys import RoiKey
from tests.ops.conftest import bdi, fit_roi, send
from tests.support import cli_env

KEY = RoiKey.of("Insp", "R1")


def infer_all(agent: Agent, images: list[bytes]) -> list[dict]:
    out = []
    for image in images:
        body = send(
            agent, "infer", role_id="Insp", roi_id="R1", mm_per_px=0.2, image=image, heatmap=True
        ).to_dict()
        out.append(
            {
                k: body[k]
                for k in (
                    "score",
                    "threshold",
                    "is_anomaly",
                    "regions",
                    "model_version",
                    "heatmap_png_base64",
                )
            }
        )
    return out


@pytest.fixture
def lab(make_agent: Callable[..., Agent], ok_pngs: list[bytes], tmp_path: Path) -> Agent:
    agent = make_agent(tmp_path / "lab")
    fit_roi(agent, ok_pngs[:6])
    return agent


def test_export_then_import_on_a_fresh_root_gives_identical_scores(
    lab: Agent,
    make_agent: Callable[..., Agent],
    tmp_path: Path,
    test_discs,
    extractor: FeatureExtractor,
) -> None:
    archive = tmp_path / "roi.tar.gz"
    services = lab.services
    manifest = export_roi(services.models, services.datasets, KEY, archive, with_dataset=True)
    assert manifest["feature_id"] == extractor.feature_id and manifest["calibrated"]
    assert manifest["dataset"] == {"ok": 6, "ng": 0}
    line = make_agent(tmp_path / "line")
    result = import_roi(archive, line.services.models, line.services.datasets, extractor.feature_id)
    assert result.replaced is None and result.calibrated and result.dataset == {"ok": 6, "ng": 0}
    images = [encode_png(disc.image) for disc in test_discs[:4]]
    assert infer_all(line, images) == infer_all(lab, images)
    assert line.services.models.memory_path(KEY).read_bytes() == (
        services.models.memory_path(KEY).read_bytes()
    )
    # The imported dataset is the lab's: a refit on the line PC rebuilds the same ROI.
    assert [s.sha256 for s in line.services.datasets.list(KEY, "ok")] == [
        s.sha256 for s in services.datasets.list(KEY, "ok")
    ]


def test_a_memory_built_with_other_weights_is_refused_unless_forced(
    lab: Agent, tmp_path: Path, checkpoints: dict[str, Path], make_agent: Callable[..., Agent]
) -> None:
    archive = tmp_path / "roi.tar.gz"
    export_roi(lab.services.models, lab.services.datasets, KEY, archive, with_dataset=False)
    # The line PC's agent runs real (here: other) weights: its feature id differs.
    other = FeatureExtractor(
        BackboneConfig(weights=str(checkpoints["safetensors"]), input_size=224, runtime="torch")
    )
    line = make_agent(tmp_path / "line")
    models, datasets = line.services.models, line.services.datasets
    with pytest.raises(OpsError, match=r"refused: memory built with other backbone weights"):
        import_roi(archive, models, datasets, other.feature_id)
    assert models.load_memory(KEY) is None  # nothing written
    with pytest.raises(OpsError, match=r"input size 224 \(agent: 448\)"):
        import_roi(
            archive,
            models,
            datasets,
            lab.services.core.extractor.feature_id.replace("-s224", "-s448"),
        )
    forced = import_roi(archive, models, datasets, other.feature_id, force=True)
    assert forced.forced and "other backbone weights" in forced.warnings[0]
    assert models.load_memory(KEY) is not None and forced.dataset is None


def test_archives_that_are_not_exports_are_refused(tmp_path: Path, lab: Agent) -> None:
    models, datasets = lab.services.models, lab.services.datasets
    fid = lab.services.core.extractor.feature_id
    sneaky = tmp_path / "sneaky.tar.gz"
    with tarfile.open(sneaky, "w:gz") as tar:
        tar.add(models.memory_path(KEY), arcname="memory.npz")
        tar.add(models.memory_path(KEY), arcname="dataset/ok/../../../../escape.png")
    with pytest.raises(OpsError, match="unexpected member"):
        import_roi(sneaky, models, datasets, fid)
    with pytest.raises(OpsError, match="has no memory"):
        export_roi(models, datasets, RoiKey.of("Insp", "nope"), tmp_path / "x.tar.gz", False)


def test_cli_export_and_a_refused_import(lab: Agent, tmp_path: Path) -> None:
    lab_env = cli_env(tmp_path / "lab")
    archive = tmp_path / "r1.tar.gz"
    out = bdi(
        ["roi", "export", "--role", "Insp", "--roi", "R1", "--with-dataset", str(archive)],
        lab_env,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "exported default/Insp/R1" in out.stdout and "dataset ok=6" in out.stdout
    # The line PC runs at 448 px: the lab's 224-px memory would give token mismatches.
    line_env = cli_env(tmp_path / "line", BDI_INPUT_SIZE="448")
    refused = bdi(["roi", "import", str(archive)], line_env, tmp_path)
    assert refused.returncode == 1 and "input size 224 (agent: 448)" in refused.stderr
    assert "--force" in refused.stderr and not (tmp_path / "line" / "models").exists()
