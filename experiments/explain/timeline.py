"""Why a user left: one simulated life's hidden state under a policy, step by step.

Panels (x = slates seen in the life; dotted lines = session ends, each marked "returned" or
"churned"): satisfaction against the return threshold of the user model (below it a user rarely
comes back the next day); every click, placed at the clicked item's hidden quality and coloured by
its appeal (clickbait: high appeal, low quality, ringed in red); per-topic fatigue; per-topic
interest drift since the first slate. Columns: policies, on the same fresh user.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.explain.fingerprint import ItemFacts
from experiments.explain.rollouts import Trace

TOPICS_SHOWN = 4
"""topics drawn in the fatigue and interest panels (the most fatigued / the most drifted)"""


def life_summary(trace: Trace, user: int) -> dict[str, float | str]:
    """Slates, sessions, clicks, clickbait clicks, final satisfaction and how the life ended."""
    rows = trace.rows_of(user)
    if not len(rows):
        return {"slates": 0.0, "sessions": 0.0, "end": "no steps"}
    last = rows[-1]
    end = "churned" if trace.churned[last] else ("reached the horizon" if trace.truncated[last] else "still active")
    out: dict[str, float | str] = {
        "slates": float(len(rows)),
        "sessions": float(trace.session_ended[rows].sum()),
        "clicks": float((trace.clicked_item[rows] >= 0).sum()),
        "return": float(trace.reward[rows].sum()),
        "end": end,
    }
    if "satisfaction" in trace.hidden:
        out["final_satisfaction"] = float(trace.hidden["satisfaction"][last])
    return out


def pick_users(traces: Sequence[Trace], count: int) -> list[int]:
    """User 0, then the users whose life length differs most between the policies (with one policy:
    the shortest lives), ``count`` in all."""
    num_users = traces[0].num_users
    lengths = np.array([[len(t.rows_of(u)) for u in range(num_users)] for t in traces], dtype=float)
    spread = lengths.max(0) - lengths.min(0) if len(traces) > 1 else -lengths[0]
    order = [int(u) for u in np.argsort(-spread, kind="stable") if u != 0]
    return [0, *order][: max(0, min(count, num_users))]


def plot_life(traces: Sequence[Trace], user: int, items: ItemFacts, topic_names: Sequence[str], path: Path,
              return_threshold: float | None = None) -> Path:
    """The hidden-state timeline of ``user`` under each trace's policy, side by side."""
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    panels = ["satisfaction", "clicks", "fatigue", "interest"]
    fig, axes = plt.subplots(len(panels), len(traces), figsize=(6.5 * len(traces) + 0.8, 9.5), squeeze=False,
                             sharex="col", sharey="row", layout="constrained")
    cmap = colormaps["plasma"]
    for col, trace in enumerate(traces):
        rows = trace.rows_of(user)
        x = np.arange(1, len(rows) + 1)
        summary = life_summary(trace, user)
        title = (f"{trace.label}: {int(summary['slates'])} slates, {int(summary.get('sessions', 0))} sessions, "
                 f"{summary['end']}")
        _session_marks(axes[:, col], trace, rows, x)
        ax = axes[0, col]
        ax.set_title(title, fontsize=9)
        if "satisfaction" in trace.hidden:
            start = trace.initial_hidden["satisfaction"][user]
            ax.plot(np.r_[0, x], np.r_[start, trace.hidden["satisfaction"][rows]], color="black", lw=1.3,
                    label="satisfaction")
        if return_threshold is not None:
            ax.axhline(return_threshold, color="crimson", ls="--", lw=0.8, label="return threshold")
        ax.set_ylabel("satisfaction")
        ax.legend(fontsize=7, loc="upper right")

        ax = axes[1, col]
        clicked = trace.clicked_item[rows]
        hit = clicked >= 0
        ids = clicked[hit]
        scatter = ax.scatter(x[hit], items.quality[ids], c=items.appeal[ids], cmap=cmap, vmin=0, vmax=1, s=18,
                             edgecolors=np.where(items.clickbait[ids], "red", "none"), linewidths=1.0)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_ylabel("clicked item's\nhidden quality")
        if col == len(traces) - 1:
            fig.colorbar(scatter, ax=axes[1, -1], label="appeal\n(red ring: clickbait)")

        for name, ax in (("fatigue", axes[2, col]), ("interest", axes[3, col])):
            if name not in trace.hidden:
                ax.text(0.5, 0.5, f"the user model has no {name}", ha="center", transform=ax.transAxes)
                continue
            values = trace.hidden[name][rows]
            start = trace.initial_hidden[name][user]
            if name == "interest":
                values = values - start  # drift since the first slate
            chosen = np.argsort(-np.abs(values).max(0), kind="stable")[:TOPICS_SHOWN]
            for topic in chosen:
                ax.plot(x, values[:, topic], lw=1.0, label=topic_names[topic])
            ax.set_ylabel("fatigue" if name == "fatigue" else "interest drift\nsince start")
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        axes[-1, col].set_xlabel("slates seen in the life")
    fig.suptitle(f"user {user}: hidden state under each policy (same fresh user)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _session_marks(axes: Sequence, trace: Trace, rows: np.ndarray, x: np.ndarray) -> None:
    ends = np.flatnonzero(trace.session_ended[rows])
    for ax in axes:
        for e in ends:
            ax.axvline(x[e] + 0.5, color="grey", ls=":", lw=0.6)
    top = axes[0]
    for e in ends:
        churned = bool(trace.churned[rows][e])
        top.annotate("churned" if churned else "", (x[e] + 0.5, 0.02), xycoords=("data", "axes fraction"),
                     color="crimson", fontsize=7, rotation=90)
        top.scatter([x[e] + 0.5], [1.0], marker="x" if churned else "^", color="crimson" if churned else "green",
                    s=20, transform=top.get_xaxis_transform(), clip_on=False)


def life_table(traces: Sequence[Trace], users: Sequence[int]) -> list[dict[str, object]]:
    """One row per (user, policy): :func:`life_summary`."""
    return [{"user": u, "policy": t.label, **life_summary(t, u)} for u in users for t in traces]
