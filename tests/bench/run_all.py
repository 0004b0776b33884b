"""Run every ``tests/bench/bench_*.py`` module's ``main()``: ``make bench``.

    python -m tests.bench.run_all [--only NAME ...] [--quick]

Measurements are JSON lines on stdout (each object has a ``"name"``); everything else that
would write to stdout is sent to stderr, so ``> results.jsonl`` keeps only the data. A module
that crashes is reported as a ``run_all.error`` line and the others still run; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.bench._report import claim_stdout, emit, log

PREFIX = "bench_"


def discover() -> list[str]:
    """Module names (without the prefix) of the bench_*.py files next to this one."""
    here = str(Path(__file__).resolve().parent)
    names = (info.name for info in pkgutil.iter_modules([here]))
    return sorted(name.removeprefix(PREFIX) for name in names if name.startswith(PREFIX))


def _call(entry: Callable[..., Any], quick: bool) -> None:
    # Modules written later may take no arguments; only pass what main() accepts.
    if "quick" in inspect.signature(entry).parameters:
        entry(quick=quick)
    else:
        entry()


def run(names: Sequence[str], quick: bool) -> int:
    failures = 0
    for name in names:
        log(f"running {PREFIX}{name} (quick={quick})")
        try:
            module = importlib.import_module(f"tests.bench.{PREFIX}{name}")
            _call(module.main, quick)
        except Exception as exc:
            traceback.print_exc()
            emit("run_all.error", module=f"{PREFIX}{name}", error=f"{type(exc).__name__}: {exc}")
            failures += 1
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(description="Run the benchmarks in tests/bench.")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this module (repeatable), one of: {', '.join(available)}",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    wanted = [name.removeprefix(PREFIX) for name in args.only or available]
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        parser.error(f"unknown benchmark {unknown}; available: {available}")
    # Benchmarks run with random weights: nothing may try to reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    claim_stdout()
    return run(wanted, args.quick)


if __name__ == "__main__":
    sys.exit(main())
