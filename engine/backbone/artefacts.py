"""Exported backbones on disk: built locally from the loaded weights, never downloaded.

Layout, under the runtime folder (``models/runtime/`` of the data root by default)::

    <weights sha256[:16]>-l<layers>-torch<version>-<libs>/trunk-fp32.onnx      ONNX Runtime fp32
                                                         /trunk-int8.onnx      dynamic int8
                                                         /trunk-fp32.xml|.bin  OpenVINO IR
                                                         /trunk-int8.xml|.bin  NNCF int8
                                                         /<file>.sha256        written last

``<libs>`` hashes the versions of every library that exports, quantises or runs them:
an upgrade builds them anew instead of serving files an older exporter wrote.

Every file is written to a hidden temp name and renamed (``engine.atomic``); the
``.sha256`` record is written after its artefact, so an artefact without a record, or
whose bytes do not match it (a SIGKILL mid-write, a corrupt disk), is built again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import TEMP_PREFIX, atomic_write_bytes, fsync_dir, new_file_mode
from engine.backbone.runners import embed_tokens, token_trunk

ONNX_OPSET = 17
# Libraries whose version changes what an export holds or how fast and how exactly it runs:
# a change builds the artefacts anew and runs the trial again.
VERSIONED = ("torch", "timm", "onnxruntime", "onnx", "openvino", "nncf")


def library_versions() -> dict[str, str | None]:
    """Installed version of each of ``VERSIONED``; None where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class Artefacts:
    def __init__(
        self, root: Path, model: Any, weights_sha256: str, layers: tuple[int, ...]
    ) -> None:
        import torch

        tag = ",".join(str(i) for i in layers)
        libs = json.dumps(library_versions(), sort_keys=True).encode()
        stamp = f"torch{torch.__version__}-{hashlib.sha256(libs).hexdigest()[:8]}"
        self.folder = root / f"{weights_sha256[:16]}-l{tag}-{stamp}"
        self.model, self.layers = model, layers
        self.built: list[str] = []  # names built (not found valid) by this object

    def onnx(self, precision: str) -> Path:
        if precision == "int8":
            fp32 = self.onnx("fp32")
            return self._ensure("trunk-int8.onnx", lambda out: _quantize_dynamic(fp32, out))
        return self._ensure("trunk-fp32.onnx", self._export_onnx)

    def openvino(self, precision: str, calibration: Callable[[], list[np.ndarray]]) -> Path:
        fp32 = self.onnx("fp32")
        if precision == "int8":
            ir = self.openvino("fp32", calibration)
            return self._ensure_ir("trunk-int8", lambda: _nncf_int8(ir, self.model, calibration))
        return self._ensure_ir("trunk-fp32", lambda: _read_openvino(fp32))

    # -- building -----------------------------------------------------------------

    def _export_onnx(self, out: Path) -> None:
        import copy

        import torch

        # A copy on the CPU: the served model may sit on a GPU and must stay there.
        trunk = copy.deepcopy(token_trunk(self.model, self.layers)).to("cpu")
        sample = torch.from_numpy(embed_tokens(self.model, np.zeros((1, 3, 28, 28), np.float32)))
        axes = {0: "batch", 1: "tokens"}
        # The TorchScript exporter: it handles the dynamic token count this needs, and
        # its deprecation notice is torch's concern, not the log's.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                trunk,
                (sample,),
                str(out),
                input_names=["tokens"],
                output_names=["features"],
                dynamic_axes={"tokens": axes, "features": axes},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )

    def _ensure(self, name: str, build: Callable[[Path], None]) -> Path:
        path = self.folder / name
        if not _valid(path):
            self.folder.mkdir(parents=True, exist_ok=True)
            with _temp_path(self.folder, path.suffix) as tmp:
                build(tmp)
                _publish(tmp, path)
            self.built.append(name)
        return path

    def _ensure_ir(self, stem: str, build: Callable[[], Any]) -> Path:
        """OpenVINO IR is two files (.xml graph, .bin weights), each checked and renamed."""
        xml, binary = self.folder / f"{stem}.xml", self.folder / f"{stem}.bin"
        if not (_valid(xml) and _valid(binary)):
            import openvino as ov

            self.folder.mkdir(parents=True, exist_ok=True)
            with _temp_path(self.folder, ".xml") as tmp:
                ov.save_model(build(), str(tmp), compress_to_fp16=False)
                tmp_bin = tmp.with_suffix(".bin")
                try:
                    _publish(tmp_bin, binary)
                    _publish(tmp, xml)
                finally:
                    tmp_bin.unlink(missing_ok=True)
            self.built.append(stem)
        return xml


def _valid(path: Path) -> bool:
    record = path.with_name(path.name + ".sha256")
    try:
        return record.read_text().strip() == _sha256(path)
    except OSError:
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _publish(tmp: Path, path: Path) -> None:
    """Rename a finished temp file into place, then record its hash (the proof it is whole)."""
    record = path.with_name(path.name + ".sha256")
    record.unlink(missing_ok=True)  # the old record must never vouch for the new bytes
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.chmod(tmp, new_file_mode())  # mkstemp's 0600 would hide it from the service group
    os.replace(tmp, path)
    fsync_dir(path.parent)
    atomic_write_bytes(record, _sha256(path).encode() + b"\n")


@contextlib.contextmanager
def _temp_path(folder: Path, suffix: str):  # type: ignore[no-untyped-def]
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _quantize_dynamic(fp32: Path, out: Path) -> None:
    """int8 weights, activations quantised per batch at run time: no calibration set, so
    the result depends on the weights alone; the fidelity gate judges it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs a "consider pre-processing" advice at WARNING
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    finally:
        quiet.setLevel(level)


def _read_openvino(onnx_path: Path) -> Any:
    import openvino as ov

    return ov.convert_model(str(onnx_path))


def _nncf_int8(ir: Path, model: Any, calibration: Callable[[], list[np.ndarray]]) -> Any:
    """Post-training int8 through NNCF, calibrated on the reference images' tokens."""
    import nncf
    import openvino as ov

    tokens = [embed_tokens(model, x[None]) for x in calibration()]
    nncf.set_log_level(logging.ERROR)
    # Its progress bars write to the terminal: never into the agent's JSON log.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(
            ov.Core().read_model(str(ir)),
            nncf.Dataset(tokens),
            subset_size=len(tokens),
            model_type=nncf.ModelType.TRANSFORMER,
        )
