"""``report.html``: the explain numbers and figures as one self-describing page (figures linked from figures/)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.explain.fingerprint import METRICS

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 2em auto; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0 1em; }
pre { background: #f6f6f6; padding: 0.6em; font-size: 0.8em; overflow-x: auto; }
.note { color: #555; font-size: 0.9em; }
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer():
            return f"{value:.0f}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(files: Sequence[Path], prefix: str, page: Path) -> str:
    return "".join(f'<img src="{html.escape(str(f.relative_to(page.parent)))}" alt="{html.escape(f.stem)}">'
                   for f in files if f.suffix == ".png" and f.stem.startswith(prefix))


def write_report(path: Path, config: Any, numbers: Mapping[str, Any], files: Sequence[Path]) -> Path:
    """Write ``path`` (report.html) from the numbers of :func:`experiments.explain.explain`."""
    prints = numbers["fingerprint"]
    labels = list(prints)
    sur = numbers["surrogate"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>longrec explain: {html.escape(labels[-1])}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>What {html.escape(labels[-1])} does{' and what RL changed' if len(labels) > 1 else ''}</h1>",
             "<p>" + "<br>".join(f"<b>{html.escape(label)}</b>: {html.escape(str(p))}" for label, p in numbers["policies"].items())
             + f"<br>environment {html.escape(config.env_id)} {html.escape(str(dict(config.env_kwargs) or ''))}; "
             f"{config.users} fresh users (seed {config.seed}), one whole life each, greedy slates; "
             f"made in {numbers['seconds']:.0f} s.</p>",
             f"<p class='note'>Clickbait: {html.escape(numbers['clickbait_rule'])}. Hidden quality and appeal are read "
             "from the simulator for analysis; no policy and no surrogate feature sees them.</p>"]

    parts.append("<h2>1. Policy fingerprint</h2>")
    parts.append(_table(["metric", *labels, "what it is"],
                        [[m, *(prints[label].get(m, float("nan")) for label in labels), METRICS.get(m, _LIFE.get(m, ""))]
                         for m in list(METRICS) + list(_LIFE)]))
    parts.append(_figures(files, "fingerprint", path))

    parts.append("<h2>2. User lives: why users left</h2><p class='note'>Same fresh user under each policy. Top: "
                 "hidden satisfaction (the user returns the next day with probability σ(slope·(satisfaction − "
                 "threshold))); ▲ returned, × churned at a session end. Then each click at the clicked item's hidden "
                 "quality, coloured by appeal (red ring: clickbait); per-topic fatigue; interest drift since the "
                 "first slate.</p>")
    lives = numbers["lives"]
    keys = ["user", "policy", "slates", "sessions", "clicks", "return", "final_satisfaction", "end"]
    parts.append(_table(keys, [[row.get(k, "") for k in keys] for row in lives]))
    parts.append(_figures(files, "life_user", path))

    parts.append("<h2>3. Per recommendation: Integrated Gradients</h2><p class='note'>Each slot's pointer logit of "
                 "its chosen item, attributed (Captum, Integrated Gradients) to the history items (left: red raised "
                 "the logit, blue lowered it) and to feature groups (right; the black tick is logit − baseline logit, "
                 "which the attributions sum to). Baseline: all item features, consumption and context zero; "
                 "responses and positions kept. Visible popularity is no input of the slate model.</p>")
    group_names = _group_names(numbers["attributions"])
    rows = []
    for state in numbers["attributions"]:
        for label, panel in state["panels"].items():
            rows.append([f"user {state['user']}, slate {state['step'] + 1}", label, panel["steps"], panel["relative_delta"],
                         *(_mean_abs(panel["groups"].get(g)) for g in group_names)])
    parts.append(_table(["state", "policy", "IG steps", "max |delta| / mean |logit − baseline|",
                         *(f"mean |{g}|" for g in group_names)], rows))
    parts.append(_figures(files, "attribution", path))

    parts.append("<h2>4. A readable surrogate</h2>")
    parts.append(f"<p class='note'>Each policy's position-0 candidate logits, centred within each state, fitted by a "
                 f"ridge regression on standardised visible features (and a depth-3 tree). Text scores: ridge probes "
                 f"of the item text embedding fitted on {html.escape(sur['probe_source'])} "
                 f"({sur['probe_impressions']} impressions, {sur['probe_clicks']} clicks). Fidelity on held-out "
                 "users; the surrogate then serves the same fresh users itself.</p>")
    parts.append(_table(["feature", "meaning"], [[k, v] for k, v in sur["features"].items()]))
    parts.append(_table(["text score", "Spearman with hidden quality", "Spearman with hidden appeal"],
                        [[k, v["quality"], v["appeal"]] for k, v in sur["probe_vs_hidden"].items()]))
    header = ["policy", "top-1 agreement", "Spearman", "tree top-1", "tree Spearman", "policy return",
              "surrogate return", "tree return", "policy sessions", "surrogate sessions"]
    body = []
    for label, row in sur["policies"].items():
        body.append([label, row["fidelity_heldout"]["top1_agreement"], row["fidelity_heldout"]["spearman"],
                     row["tree_fidelity_heldout"]["top1_agreement"], row["tree_fidelity_heldout"]["spearman"],
                     f"{row['policy_return']:.1f} ± {row['policy_return_ci95']:.1f}",
                     f"{row['surrogate_return']:.1f} ± {row['surrogate_return_ci95']:.1f}",
                     f"{row['tree_return']:.1f} ± {row['tree_return_ci95']:.1f}",
                     row["policy_sessions"], row["surrogate_sessions"]])
    parts.append(_table(header, body))
    parts.append(_figures(files, "surrogate", path))
    for label, row in sur["policies"].items():
        parts.append(f"<h3>{html.escape(label)}: depth-3 tree (features in standard deviations; leaf value: the policy's centred score in its standard deviations)</h3>"
                     f"<pre>{html.escape(row.get('tree_rules', ''))}</pre>")
    parts.append("<p class='note'>All numbers: explain.json next to this page.</p></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


_LIFE = {
    "life_return": "long-term return per user (sum of rewards of the life)",
    "life_sessions": "sessions per user",
    "life_return_rate": "share of session ends followed by a return",
    "life_length": "slates per life",
}


def _group_names(attributions: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for state in attributions:
        for panel in state["panels"].values():
            names += [g for g in panel["groups"] if g not in names]
    return names


def _mean_abs(values: Sequence[float] | None) -> float:
    return sum(abs(v) for v in values) / len(values) if values else float("nan")
