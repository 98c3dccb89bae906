"""Long-term evaluation of any agent on any registered environment, batched over users.

Each of ``num_users`` fresh users lives exactly one episode (a life of many
sessions, until churn or the horizon) per seed; all users are simulated at once
by the ``BatchedSimulator`` (users that finish are auto-reset by the core and
their replacements are ignored; ``agents.logs`` records behaviour policies'
lives the same way). The same agent, env and seed give the same numbers.

Per user it records the long-term return (the sum of rewards of the life),
sessions lived, return rate (the fraction of the user's session ends followed
by a return the next day: retention), CTR (clicked slates / slates), mean
consumption of clicked items, final satisfaction (hidden state after the last
step of the life), intra-slate diversity (distinct topics / K, averaged over the
user's slates); and per seed the catalog coverage (fraction of items ever shown).
On a cold-start env (``new_item_share > 0``: the core's ``is_new_item``) it also
splits the return by the clicked item (``COLD_START_METRICS``).
Every metric gets a 95% confidence interval: normal-approximation over users
(pooled over seeds; bootstrap over users for coverage), and, when S > 1, a
Student-t interval over the S per-seed means (``<metric>_seed_ci95``). This is
the protocol of long-term recommender evaluation in simulators (RecSim, Ie et
al. 2019; KuaiSim, Zhao et al. 2023): whole user lives, many users, CIs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.baselines import Agent, SeedLike, make_baseline
from agents.registry import FIXED_AGENTS, display_name
from agents.stats import coverage_ci95, mean_ci95, t_ci95
from envs.core import BatchedSimulator, StepResult
from envs.registration import make_core

USER_METRICS = (
    "return",
    "sessions",
    "return_rate",
    "ctr",
    "consumption",
    "final_satisfaction",
    "diversity",
    "length",
)
"""metrics with one value per user (``length`` = slates seen in the life)"""

COLD_START_METRICS = (
    "return_new_clicks",
    "return_old_clicks",
    "new_click_share",
    "new_shown_share",
)
"""per-user metrics of an env with new items (``core.is_new_item.any()``): the return earned on clicks of new
items and the rest (clicks of old items; a step without a click earns nothing but a duplicate penalty), so the
two add up to ``return``; the share of the user's clicks that were new items and of the items shown"""

AgentSpec = Agent | str | Callable[[BatchedSimulator], Agent]
"""an agent, a baseline name (``make_baseline``), or a factory called with the evaluation core"""

StepCallback = Callable[[np.ndarray, dict[str, np.ndarray], np.ndarray, StepResult], None]
"""``on_step(rows, observation, slates, result)`` of ``run_lives``"""


@dataclass
class LivesRecord:
    """Per-user outcomes of one life each (arrays of shape (num_users,)) for one seed."""

    seed: int
    values: dict[str, np.ndarray]
    seen: np.ndarray
    """(num_users, num_items) bool: item ever shown to the user (for coverage)"""
    steps: int
    """environment steps taken by users still in their first life"""


@dataclass
class Evaluation:
    """Result of ``evaluate_agent``: the JSON row plus the per-seed records."""

    row: dict[str, Any]
    records: list[LivesRecord] = field(default_factory=list)


def _distinct_per_row(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values, axis=1)
    return 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(axis=1)


def run_lives(
    agent: Agent,
    core: BatchedSimulator,
    seed: int,
    progress: Any = None,
    max_steps: int = 1_000_000,
    *,
    agent_seed: SeedLike = None,
    all_rows: bool = False,
    on_step: StepCallback | None = None,
) -> LivesRecord:
    """Run ``agent`` on every user of ``core`` for one whole life; ``core.reset(seed)`` first.

    The agent is reset with ``agent_seed`` (default ``seed``). Non-privileged agents
    see only the users still in their first life (the finished rows get a
    placeholder slate that is never counted), so a costly policy is not run on the
    replacement users; ``all_rows=True`` asks the agent for every row, as privileged
    agents always are. ``on_step(rows, observation, slates, result)`` sees each step,
    with ``rows`` the users still in their first life before it.
    """
    observation = core.reset(seed=seed)
    agent.reset(seed if agent_seed is None else agent_seed)
    n, k = core.num_users, core.slate_size
    catalog = core.catalog
    alive = np.ones(n, dtype=bool)
    totals = {name: np.zeros(n) for name in ("return", "clicks", "consumed", "ends", "returns", "diversity")}
    length = np.zeros(n, dtype=np.int64)
    sessions = np.zeros(n)
    final_satisfaction = np.full(n, np.nan)
    seen = np.zeros((n, catalog.num_items), dtype=bool)
    is_new_item = core.is_new_item if core.is_new_item.any() else None
    if is_new_item is not None:
        totals.update({name: np.zeros(n) for name in ("return_new", "return_old", "new_clicks", "new_shown")})
    placeholder = np.tile(np.arange(k, dtype=np.int64), (n, 1))
    steps = 0
    for _ in range(max_steps):
        rows = np.flatnonzero(alive)
        if agent.privileged or all_rows:
            slates = np.asarray(agent.act(observation), dtype=np.int64)
        else:
            slates = placeholder.copy()
            slates[rows] = agent.act({key: value[rows] for key, value in observation.items()})
        result = core.step(slates)
        if on_step is not None:
            on_step(rows, observation, slates, result)
        info = result.info
        slate_items = np.take_along_axis(observation["candidate_item_ids"], slates, axis=1)[rows]
        steps += len(rows)
        totals["return"][rows] += result.reward[rows]
        clicked = info["clicked_position"][rows] >= 0
        totals["clicks"][rows] += clicked
        totals["consumed"][rows] += np.where(clicked, info["consumption"][rows], 0.0)
        totals["ends"][rows] += info["session_ended"][rows]
        totals["returns"][rows] += info["session_ended"][rows] & info["returned"][rows]
        totals["diversity"][rows] += _distinct_per_row(catalog.topic[slate_items]) / k
        length[rows] += 1
        seen[rows[:, None], slate_items] = True
        if is_new_item is not None:
            reward = result.reward[rows]
            clicked_new = clicked & is_new_item[info["clicked_item_id"][rows]]  # a no-click's id -1 is masked
            totals["return_new"][rows] += np.where(clicked_new, reward, 0.0)
            totals["return_old"][rows] += np.where(clicked_new, 0.0, reward)
            totals["new_clicks"][rows] += clicked_new
            totals["new_shown"][rows] += is_new_item[slate_items].sum(axis=1)

        done = result.terminated | result.truncated
        finished = alive & done
        if finished.any():
            sessions[finished] = info["day"][finished]
            final_satisfaction[finished] = result.final_hidden_state["satisfaction"][finished]
            alive &= ~finished
            if progress is not None:
                progress.update(int(finished.sum()))
        if not alive.any():
            break
        observation = result.observation
    else:
        raise RuntimeError(f"{int(alive.sum())} users were still in their first life after {max_steps} steps")

    with np.errstate(invalid="ignore", divide="ignore"):
        values = {
            "return": totals["return"],
            "sessions": sessions,
            "return_rate": totals["returns"] / totals["ends"],
            "ctr": totals["clicks"] / length,
            "consumption": np.where(totals["clicks"] > 0, totals["consumed"] / totals["clicks"], np.nan),
            "final_satisfaction": final_satisfaction,
            "diversity": totals["diversity"] / length,
            "length": length.astype(np.float64),
        }
        if is_new_item is not None:
            values["return_new_clicks"] = totals["return_new"]
            values["return_old_clicks"] = totals["return_old"]
            values["new_click_share"] = np.where(totals["clicks"] > 0, totals["new_clicks"] / totals["clicks"], np.nan)
            values["new_shown_share"] = totals["new_shown"] / (length * k)
    return LivesRecord(seed, values, seen, steps)


def _build_agent(agent: AgentSpec, core: BatchedSimulator, seed: int) -> Agent:
    if isinstance(agent, str):
        return make_baseline(agent, core, seed=seed)
    if isinstance(agent, Agent):
        if agent.privileged and getattr(agent, "core", core) is not core:
            attach = getattr(agent, "attach", None)
            if attach is None:
                raise ValueError(
                    f"{type(agent).__name__} is privileged and bound to another simulator; pass a factory "
                    "(core -> agent) so it can be built on the evaluation core"
                )
            attach(core)
        return agent
    if callable(agent):
        return agent(core)
    raise ValueError(f"agent must be an Agent, a baseline name or a factory, not {type(agent).__name__}")


def evaluate_agent(
    agent: AgentSpec,
    env_id: str,
    num_users: int = 1000,
    seeds: Sequence[int] = (0,),
    env_kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    progress: bool = True,
) -> Evaluation:
    """Evaluate ``agent`` on ``num_users`` fresh users of ``env_id`` for each seed in ``seeds``.

    ``agent`` is an ``Agent``, a baseline name (see ``agents.baselines.make_baseline``)
    or a factory ``core -> Agent`` (needed for privileged agents, which read the
    evaluation core). Returns an ``Evaluation`` whose ``row`` is a flat JSON-ready
    dict: ``agent``, ``env_id``, ``num_users``, ``seeds``, ``env_steps``, ``seconds``,
    and for each metric ``<metric>`` (mean over all users of all seeds),
    ``<metric>_ci95`` (over users) and, when S > 1, ``<metric>_seed_ci95``; the
    metrics are ``USER_METRICS``, plus ``COLD_START_METRICS`` when the env has new
    items (``new_item_share > 0``).
    """
    if num_users < 1:
        raise ValueError(f"num_users={num_users!r} must be >= 1")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed")
    core = make_core(env_id, num_users=num_users, **(env_kwargs or {}))
    built = _build_agent(agent, core, seeds[0])
    label = name or (agent if isinstance(agent, str) else type(built).__name__)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_users * len(seeds), desc=f"eval {label}", unit="user", leave=False)
    start = time.perf_counter()
    records = [run_lives(built, core, seed, progress=bar) for seed in seeds]
    if bar is not None:
        bar.close()
    row: dict[str, Any] = {
        "agent": label,
        "env_id": env_id,
        "num_users": num_users,
        "seeds": seeds,
        "env_steps": int(sum(r.steps for r in records)),
        "seconds": round(time.perf_counter() - start, 3),
    }
    metrics = USER_METRICS + (COLD_START_METRICS if core.is_new_item.any() else ())
    for metric in metrics:
        mean, half = mean_ci95(np.concatenate([r.values[metric] for r in records]))
        row[metric], row[f"{metric}_ci95"] = mean, half
        if len(seeds) > 1:
            row[f"{metric}_seed_ci95"] = t_ci95([np.nanmean(r.values[metric]) for r in records])[1]
    coverages, halves = zip(
        *(coverage_ci95(r.seen, np.random.default_rng([r.seed, 7])) for r in records), strict=True
    )
    row["coverage"] = float(np.mean(coverages))
    row["coverage_ci95"] = float(np.mean(halves))
    if len(seeds) > 1:
        row["coverage_seed_ci95"] = t_ci95(coverages)[1]
    return Evaluation(row, records)


def format_row(row: dict[str, Any]) -> str:
    """One-line summary ``agent: return m ± h | ctr ... | return rate ...`` (privileged agents marked)."""
    line = (
        f"{display_name(row['agent'])}: return {row['return']:.1f} ± {row['return_ci95']:.1f} | "
        f"sessions {row['sessions']:.2f} | return rate {row['return_rate']:.3f} | ctr {row['ctr']:.3f} | "
        f"coverage {row['coverage']:.3f}"
    )
    if "return_new_clicks" in row:
        line += (f" | return on new items {row['return_new_clicks']:.1f} ± {row['return_new_clicks_ci95']:.1f} "
                 f"(new clicks {row['new_click_share']:.3f})")
    return line


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m agents.evaluate --env longrec/Video-v0 --agents random myopic oracle``."""
    import argparse

    parser = argparse.ArgumentParser(description="Evaluate baselines on a longrec environment (JSON rows).")
    parser.add_argument("--env", default="longrec/Video-v0")
    parser.add_argument("--agents", nargs="+", choices=FIXED_AGENTS, default=list(FIXED_AGENTS))
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    for name in args.agents:
        result = evaluate_agent(name, args.env, num_users=args.users, seeds=args.seeds)
        print(format_row(result.row))
        print(json.dumps(result.row))


if __name__ == "__main__":
    main()
