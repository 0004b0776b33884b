"""``bdi-agent runtime probe``: run the backbone runtime trial again and print its table.

The new choice is remembered in the runtime folder, so agents started afterwards (on
this data root, this machine and this configuration) serve with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import Settings
    from engine.backbone.choose import Choice

COLUMNS = ("runtime", "precision", "status", "ms", "ratio", "cos_mean", "cos_min", "build_s")


def probe(settings: Settings) -> Choice:
    """The trial on the agent's own backbone settings, ignoring any remembered choice."""
    from agent.bootstrap import build_engine

    extractor = build_engine(settings).extractor
    return extractor.reselect()


def table(choice: Choice) -> str:
    """The trial's rows as aligned text, the reason of each row left out or refused."""
    rows = [[_cell(getattr(row, name), name) for name in COLUMNS] for row in choice.rows]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    for row, cells in zip(choice.rows, rows, strict=True):
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        lines.append(f"{line}  {row.reason}".rstrip())
    lines.append(f"serving: {choice.reason}")
    if choice.trial_s is not None:
        lines.append(
            f"trial: {choice.trial_s} s, of which {choice.build_s} s building the exports "
            f"({choice.source})"
        )
    return "\n".join(lines)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5f}" if column.startswith("cos") else f"{value:.2f}"
    return str(value)
