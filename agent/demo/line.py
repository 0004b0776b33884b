"""What the demo's simulated line produces: synthetic disc crops, named by what they are.

The pictures come from the synthetic disc generator (``agent/demo/discs.py``, which the
tests use too): it ships with the package, so the demo runs from an installed wheel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

AGENT_ID = "demo"
ROLE_ID = "demo"
ROI_ID = "face"
MM_PER_PX = 0.2
SIZE = 224  # the demo's BDI_INPUT_SIZE: 4x less backbone work than 448
# With random weights only gross defects stand out; these two do, most of the time.
DEFAULT_DEFECTS = ("rust", "crack")

_KIND = re.compile(r"_(ok|scratch|crack|rust|pits|edge_chip)(?:_\d+)?\.[a-z]+$")


def discs() -> ModuleType:
    """The generator module, imported on first use (numpy and OpenCV are heavy)."""
    from agent.demo import discs as module

    return module


def disc_png(seed: int, index: int, defect: str | None, size: int = SIZE) -> bytes:
    """One crop; the same (seed, index, defect) always gives the same pixels."""
    import numpy as np

    module = discs()
    disc = module.make_disc(np.random.default_rng([seed, index]), size, defect=defect)
    return bytes(module.encode_png(disc.image))


def roi_shape(size: int = SIZE) -> dict[str, Any]:
    """The friction face (an annulus) of a centred disc of this size, as a ROI shape."""
    import numpy as np

    shape: dict[str, Any] = discs().make_disc(np.random.default_rng(0), size).roi_shape
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in shape.items()}


@dataclass(frozen=True)
class Mix:
    """Which parts are defective: every ``defect_every``-th one, cycling through ``kinds``."""

    defect_every: int
    kinds: tuple[str, ...]

    def kind(self, index: int) -> str | None:
        if not self.kinds or self.defect_every <= 0 or index % self.defect_every:
            return None
        return self.kinds[(index // self.defect_every) % len(self.kinds)]


def truth_of(name: str) -> str | None:
    """``ok`` or the defect kind written in a demo file name, else None."""
    found = _KIND.search(name)
    return found.group(1) if found else None


def add_mix_args(parser: Any) -> None:
    """The options the camera and the PLC share."""
    parser.add_argument("--role", default=ROLE_ID)
    parser.add_argument("--roi", default=ROI_ID)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between parts")
    parser.add_argument("--size", type=int, default=SIZE, help="crop size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--defect-every", type=int, default=3, help="every Nth part is bad")
    parser.add_argument("--defects", default=",".join(DEFAULT_DEFECTS), help="kinds, comma list")


def mix_of(args: Any) -> Mix:
    kinds = tuple(k.strip() for k in str(args.defects).split(",") if k.strip())
    unknown = [k for k in kinds if k not in discs().DEFECT_KINDS]
    if unknown:
        raise SystemExit(f"unknown defect kinds {unknown}; one of {discs().DEFECT_KINDS}")
    return Mix(args.defect_every, kinds)
