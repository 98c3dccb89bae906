"""``longrec runs``: every run folder under the given paths, one line each.

Columns: the run folder, its status (``died`` for a ``running`` run whose process is gone, see
:func:`experiments.run.live_status`), job, agent, env, seed, the environment steps it reached and
its result (``eval/return``, or the pretraining's validation NDCG@10). A stopped training run
(``interrupted``, ``died``, ``failed``) continues with ``longrec train --resume RUN``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from experiments.run import live_status, read_json, read_metrics

COLUMNS = ("run", "status", "job", "agent", "env", "seed", "steps", "result")
RESUMABLE = ("interrupted", "died", "failed")


def run_row(folder: Path) -> dict[str, Any]:
    """One line of the listing for a run folder."""
    summary = read_json(folder / "summary.json")
    metrics = summary.get("metrics") or {}
    steps = metrics.get("train/num_timesteps")
    if steps is None:  # unfinished: the last step it logged
        logged = [row["step"] for row in read_metrics(folder) if isinstance(row.get("step"), int)]
        steps = max(logged) if logged else None
    result = metrics.get("eval/return")
    if result is None and metrics.get("pretrain/val/ndcg@10") is not None:
        result = f"ndcg@10 {metrics['pretrain/val/ndcg@10']:.4f}"
    return {"run": _shown(folder), "status": live_status(summary), "job": summary.get("job_type", "?"),
            "agent": summary.get("agent", "?"), "env": str(summary.get("env", "?")).split("/")[-1],
            "seed": summary.get("seed", "?"), "steps": steps if steps is not None else "",
            "result": f"{result:.1f}" if isinstance(result, float) else (result if result is not None else ""),
            "_started": str(summary.get("started_at", ""))}


def list_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Rows of :func:`run_row` for the run folders at or below ``paths``, oldest first."""
    from experiments.compare import find_runs

    folders = find_runs(paths, max_depth=4)
    return sorted((run_row(folder) for folder in folders), key=lambda row: row.pop("_started"))


def _shown(folder: Path) -> str:
    """The folder relative to the working directory when it lies below it."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def runs_table(rows: list[dict[str, Any]]) -> str:
    """Aligned plain-text table of ``rows`` (:data:`COLUMNS`), with a hint when some run can be resumed."""
    cells = [COLUMNS, *[[str(row[c]) for c in COLUMNS] for row in rows]]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip()
             for line in cells]
    stopped = [row for row in rows if row["status"] in RESUMABLE and row["job"] in ("train", "quickstart")]
    if stopped:
        lines.append(f"\n{len(stopped)} stopped training run(s); continue one with `longrec train --resume RUN`")
    return "\n".join(lines)
