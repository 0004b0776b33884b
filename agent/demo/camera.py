"""The demo's camera: drops a synthetic disc crop into the agent's inbox now and then.

    python -m agent.demo.camera --inbox data-demo/inbox [--interval 2] [--defect-every 3]

It follows the camera convention of contract section 6: write ``<name>.png.tmp``, then
rename it to ``<name>.png`` so the agent never reads half a file. The file name says what
the part really is (``..._ok.png``, ``..._rust.png``) so whoever prints the verdict can
check it. mm_per_px and the ROI shape come from the agent's ``rois.yaml``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from agent.demo.line import add_mix_args, disc_png, mix_of


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo-camera", description=__doc__)
    parser.add_argument("--inbox", type=Path, required=True, help="the agent's inbox folder")
    parser.add_argument("--count", type=int, default=0, help="stop after N parts (0: never)")
    add_mix_args(parser)
    args = parser.parse_args(argv)
    mix = mix_of(args)
    folder = args.inbox / args.role / args.roi / "infer"
    folder.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)
    run = time.strftime("%H%M%S")  # names stay unique across demo runs on one day
    index = 0
    try:
        time.sleep(args.interval / 2)  # half a beat behind the PLC: the output alternates
        while not args.count or index < args.count:
            index += 1
            kind = mix.kind(index)
            name = f"cam_{run}_{index:04d}_{kind or 'ok'}.png"
            tmp = folder / f"{name}.tmp"
            tmp.write_bytes(disc_png(args.seed + 1000, index, kind, args.size))
            os.replace(tmp, folder / name)  # the rename is what makes it visible
            print(f"[camera] {name} -> {folder}/", flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    print(f"[camera] stopped after {index} parts", flush=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
