"""``make reliability-report``: run every test marked ``reliability`` and print one table.

    python -m tests.reliability.report              the suite (its load run is 60 s)
    python -m tests.reliability.report --soak       the 30-minute load run alone (make soak)
    python -m tests.reliability.report --print      the table of the last runs, run nothing

Each run's outcomes are JSON lines (``tests/reliability/recording.py``) in
``bench-out/reliability/``: ``suite.jsonl`` and ``soak.jsonl``. The table shows both, the
soak from its own, latest run. The exit status is 1 when a test of the run just made
failed or lost data (with ``--print``: of any run shown).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from typing import Any

from tests.reliability.recording import FAMILIES, OUT_ENV
from tests.support import ROOT

OUT_DIR = ROOT / "bench-out" / "reliability"
SECTIONS = {
    "load": "load held",
    "fault": "faults survived",
    "bad_input": "bad inputs tried",
    "security": "security",
}
SOAK_FILE = "tests/reliability/soak.py"


def run(kind: str) -> int:
    """Run the tests of ``kind`` (suite or soak) with their outcomes going to a fresh file."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{kind}.jsonl"
    out.unlink(missing_ok=True)
    targets = [SOAK_FILE, "--timeout=0"] if kind == "soak" else ["tests"]
    log = OUT_DIR / f"{kind}.log"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "reliability", *targets]
    print(f"running: {' '.join(command[1:])} (log: {log.relative_to(ROOT)})", file=sys.stderr)
    with log.open("w") as handle:
        done = subprocess.run(
            command, cwd=ROOT, env={**os.environ, OUT_ENV: str(out)}, stdout=handle, stderr=handle
        )
    return done.returncode


def read(kind: str) -> list[dict[str, Any]]:
    path = OUT_DIR / f"{kind}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_figures(r: dict[str, Any]) -> str:
    if "requests" not in r:
        return r.get("detail", "")
    drift = r.get("p95_drift")
    verdict = r.get("verdict") or {}
    unmet = [name for name, ok in verdict.items() if not ok]
    return (
        f"{r['requests']} requests at {r['rate_per_s']}/s ({r['capacity_per_s']}/s capacity), "
        f"missing {r['missing']}, repeated {r['repeated']}, errors {r['errors'] or 0}; "
        f"p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms; PLC p95 first→last window "
        f"{r['p95_first_ms']}→{r['p95_last_ms']} ms "
        f"({'n/a' if drift is None else f'{drift:+.0%}'}); RSS drift {r['rss_drift_mb']:+} MB "
        f"(max {r['rss_max_mb']} MB); fds {r['fds'][0]}→{r['fds'][1]}; "
        f"threads {r['threads'][0]}→{r['threads'][1]}"
        + (f"; NOT MET: {', '.join(unmet)}" if unmet else "")
    )


def outcome(r: dict[str, Any]) -> str:
    if r["outcome"] == "passed":
        return {"load": "held", "fault": "survived"}.get(r["family"], "passed")
    return r["outcome"].upper()


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(records: list[dict[str, Any]]) -> str:
    rows = [
        "| area | what was tried | tried | failures | lost | outcome | figures |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for family in FAMILIES:
        for r in (r for r in records if r["family"] == family):
            figures = load_figures(r) if family == "load" else r.get("detail", "")
            if r["outcome"] != "passed" and r.get("reason"):
                figures = f"{figures} — {r['reason']}" if figures else r["reason"]
            tried = r.get("tried", r.get("requests", ""))
            row = (SECTIONS[family], r["name"], tried, r.get("failures", ""), r.get("lost", ""))
            rows.append("| " + " | ".join(cell(v) for v in (*row, outcome(r), figures)) + " |")
    return "\n".join(rows)


def summary(records: list[dict[str, Any]]) -> tuple[str, bool]:
    lost = sum(int(r.get("lost") or 0) for r in records)
    failed = [r for r in records if r["outcome"] == "failed"]
    skipped = [r for r in records if r["outcome"] == "skipped"]
    line = (
        f"data lost: {lost}. {len(records)} checks: {len(records) - len(failed) - len(skipped)} "
        f"passed, {len(failed)} failed, {len(skipped)} skipped."
    )
    return line, lost == 0 and not failed


def report(records_by_kind: dict[str, list[dict[str, Any]]]) -> tuple[str, bool]:
    records = [r for kind in ("suite", "soak") for r in records_by_kind.get(kind, [])]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if not records:
        return "no reliability outcomes recorded yet: run `make reliability-report`", False
    line, ok = summary(records)
    return f"Reliability report, {stamp}\n\n{table(records)}\n\n{line}", ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--soak", action="store_true", help="the 30-minute load run alone")
    group.add_argument("--print", action="store_true", help="the table of the last runs")
    args = parser.parse_args(argv)
    records = {kind: read(kind) for kind in ("suite", "soak")}
    if args.print:
        text, ok = report(records)
        print(text)
        return 0 if ok else 1
    kind = "soak" if args.soak else "suite"
    status = run(kind)
    records[kind] = read(kind)
    text, _ = report(records)
    print(text)
    _, ok = summary(records[kind])
    return 1 if status or not records[kind] or not ok else 0


if __name__ == "__main__":
    sys.exit(main())
