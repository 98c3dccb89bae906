"""InterestEvolution headroom: what knowing the user's interests and the videos' quality is each worth.

On ``longrec/InterestEvolution-v0`` a click watches 4 minutes whatever the video, and quality only refunds
session time, so a policy learns quality from how long sessions last. This script separates the two hidden
quantities with privileged references (†), all on the same fresh users (users seeded ``--seed``):

* ``oracle``†: knows the interests and each video's quality (``agents.baselines.OracleAgent``);
* ``interest_posterior``†: knows quality; estimates each interest from its own count of the user's clicks
  per cluster so far (a Beta(1, 3) prior on the click rate, mapped to an interest) and optimises the slate as
  the oracle does with that estimate;
* ``quality_only``†: knows quality, not the interests (the oracle's value with every interest 0, so it shows
  the candidates of the highest quality);
* ``random``; and each ``--policy`` (an ``LLMSlatePolicy`` folder, used greedily as in the benchmarks, or a PPO
  checkpoint file of a run, ``checkpoints/ppo/last.pt`` or ``best.pt``: the weights it holds, with the run's
  ``checkpoints/final_policy`` for the rest; e.g. a run's last weights next to the ones ``keep_best`` kept).

Besides the return it prints the hidden quality of the videos shown and clicked, the mean quality of the two
best candidates on offer (the most a slate of two could show), the CTR, slates per episode and the return
discounted with PPO's γ (``--gamma``: the objective PPO maximises). ``--per-cluster``
adds, per agent, how often a video of each cluster is shown when it is a candidate (clusters in order of their
mean quality): whether a policy has learned which clusters pay. Last line: JSON.

    python benchmarks/ie_headroom.py --users 2000 --policy runs/long_term/ie_myopic_1M_best/seed_0/runs/*ce_ppo__*/checkpoints/final_policy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.baselines import OracleAgent, make_baseline
from agents.evaluate import run_lives
from agents.slateq import optimise_slate
from agents.stats import mean_ci95
from envs.core import RESPONSE_CLICK, RESPONSE_PAD, BatchedSimulator
from envs.interest_evolution import InterestEvolutionUserModel
from envs.registration import make_core

ENV_ID = "longrec/InterestEvolution-v0"
CLICK_RATE_PRIOR = (1.0, 3.0)
"""Beta prior (clicks, skips) of a cluster's click rate: 1/4, a 2-video slate's rate at interest 0"""


class InterestEstimateAgent:
    """Privileged on quality only: the oracle's slate under interests estimated from the user's clicks.

    ``learn=False`` keeps every estimate at the prior (interest 0): ``quality_only``. The click rate of
    cluster c is ``(clicks_c + a) / (shown_c + a + b)``; with two videos of interest 0 on a slate a video's
    click probability is 1/4, so the rate maps to the interest ``clip(4 * rate - 1, -1, 1)``."""

    privileged = True

    def __init__(self, core: BatchedSimulator, learn: bool = True) -> None:
        if not isinstance(core.user_model, InterestEvolutionUserModel):
            raise ValueError(f"InterestEstimateAgent needs {ENV_ID}'s user model, not {type(core.user_model).__name__}")
        self.core, self.learn = core, learn
        self.oracle = OracleAgent(core)
        self.num_clusters = core.user_model.config.num_clusters

    def reset(self, seed: int | None = None) -> None:
        shape = (self.core.num_users, self.num_clusters)
        self.shown, self.clicks = np.zeros(shape), np.zeros(shape)

    def _count_last_slate(self, observation: dict[str, np.ndarray]) -> None:
        """Add the previous slate (the history's last k entries) to the counts; a new user starts at zero."""
        k, topic = self.core.slate_size, self.core.catalog.topic
        item_ids, responses = observation["history_item_ids"][:, -k:], observation["history_responses"][:, -k:]
        new_user = responses[:, 0] == RESPONSE_PAD
        self.shown[new_user], self.clicks[new_user] = 0.0, 0.0
        rows = np.flatnonzero(~new_user)
        clusters = topic[item_ids[rows]]
        for position in range(k):
            np.add.at(self.shown, (rows, clusters[:, position]), 1.0)
            np.add.at(self.clicks, (rows, clusters[:, position]), responses[rows, position] == RESPONSE_CLICK)

    def interests(self) -> np.ndarray:
        """(B, clusters) estimated interests."""
        a, b = CLICK_RATE_PRIOR
        rate = (self.clicks + a) / (self.shown + a + b)
        return np.clip(4.0 * rate - 1.0, -1.0, 1.0)

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        if self.learn:
            self._count_last_slate(observation)
        core = self.core
        clusters = core.catalog.topic[core.candidate_item_ids]
        interest = np.take_along_axis(self.interests(), clusters, axis=1)
        min_normalizer = core.user_model.config.min_normalizer
        utilities = np.log(np.maximum(interest - min_normalizer, 1e-3))
        click_value, no_click_value = self.oracle.item_values()
        return optimise_slate("greedy", click_value, utilities, core.position_bias, core.no_click_utility(),
                              no_click_value)


def measure(agent: Any, core: BatchedSimulator, seed: int, gamma: float = 0.99) -> dict[str, float]:
    """One life per user of ``core``: return (mean, CI), the ``gamma``-discounted return and the hidden quality
    of what was shown and clicked."""
    quality, cluster = core.catalog.quality, core.catalog.topic
    sums = {"shown": 0.0, "best_two": 0.0, "clicked": 0.0}
    counts = {"slates": 0, "clicks": 0}
    offered, picked = np.zeros(int(cluster.max()) + 1), np.zeros(int(cluster.max()) + 1)
    k = core.slate_size
    discounted, steps = np.zeros(core.num_users), np.zeros(core.num_users)

    def on_step(rows, observation, slates, result) -> None:
        discounted[rows] += gamma ** steps[rows] * result.reward[rows]
        steps[rows] += 1
        candidates = observation["candidate_item_ids"][rows]
        shown = np.take_along_axis(candidates, slates[rows], axis=1)
        sums["shown"] += float(quality[shown].mean(axis=1).sum())
        np.add.at(offered, cluster[candidates].ravel(), 1)
        np.add.at(picked, cluster[shown].ravel(), 1)
        sums["best_two"] += float(np.sort(quality[candidates], axis=1)[:, -k:].mean(axis=1).sum())
        clicked = result.info["clicked_item_id"][rows]
        clicked = clicked[clicked >= 0]
        sums["clicked"] += float(quality[clicked].sum())
        counts["slates"] += len(rows)
        counts["clicks"] += len(clicked)

    record = run_lives(agent, core, seed, on_step=on_step)
    mean, half = mean_ci95(record.values["return"])
    return {"return": mean, "ci95": half, "privileged": bool(getattr(agent, "privileged", False)),
            "shown_quality": sums["shown"] / counts["slates"], "best_two_quality": sums["best_two"] / counts["slates"],
            "clicked_quality": sums["clicked"] / max(counts["clicks"], 1), "ctr": counts["clicks"] / counts["slates"],
            "slates": float(record.values["length"].mean()), "discounted_return": float(discounted.mean()),
            "shown_given_offered": (picked / np.maximum(offered, 1)).tolist()}


REFERENCES = {
    "oracle": lambda core, seed: OracleAgent(core),
    "interest_posterior": lambda core, seed: InterestEstimateAgent(core),
    "quality_only": lambda core, seed: InterestEstimateAgent(core, learn=False),
    "random": lambda core, seed: make_baseline("random", core, seed=seed),
}


def policy_label(path: Path) -> str:
    """``runs/long_term/<bench>/seed_<s>/...`` -> ``<bench>/seed_<s>`` (``.../last.pt`` adds `` last``); otherwise
    the folder's name."""
    parts = path.parts
    seeds = [i for i, part in enumerate(parts) if part.startswith("seed_") and i > 0]
    label = f"{parts[seeds[0] - 1]}/{parts[seeds[0]]}" if seeds else path.name
    return f"{label} {path.stem}" if seeds and path.suffix == ".pt" else label


def policy_folder(path: Path) -> Path:
    """The ``LLMSlatePolicy`` folder behind ``--policy path``: the folder itself, or for a PPO checkpoint file the
    run's ``checkpoints/final_policy`` (two folders up); refuses anything else."""
    if path.is_dir():
        return path
    folder = path.parent.parent / "final_policy"
    if not path.is_file() or not folder.is_dir():
        raise ValueError(f"--policy {str(path)!r}: not an LLMSlatePolicy folder, nor a PPO checkpoint file with the "
                         f"run's final_policy at {str(folder)!r}")
    return folder


def load_policy_agent(path: Path, core: BatchedSimulator, seed: int) -> Any:
    """``pctr_greedy`` on an ``LLMSlatePolicy`` folder, or on the weights of a PPO checkpoint file (``last.pt``
    with the policy's ``state_dict``, ``best.pt`` with ``keep_best``'s ``state``) in the run's final policy."""
    agent = make_baseline("pctr_greedy", core, seed=seed, path=policy_folder(path))
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=False)
        agent.policy.load_state_dict(payload["policy"] if "policy" in payload else payload["state"])
    return agent


def agent_label(name: str) -> str:
    """A reference's name, or the short label of a ``--policy`` path."""
    return name if name in REFERENCES else policy_label(Path(name))


def print_per_cluster(rows: dict[str, dict[str, Any]], core: BatchedSimulator) -> None:
    """One line per cluster: its mean hidden quality and each agent's P(shown | the cluster is a candidate)."""
    cluster, quality = core.catalog.topic, core.catalog.quality
    means = np.array([quality[cluster == c].mean() for c in range(int(cluster.max()) + 1)])
    print("P(shown | a candidate), by cluster (mean hidden quality)")
    print(f"{'quality':>8} " + " ".join(f"{agent_label(name)[-18:]:>18}" for name in rows))
    for c in np.argsort(means):
        rates = " ".join(f"{row['shown_given_offered'][c]:18.3f}" for row in rows.values())
        print(f"{means[c]:+8.2f} {rates}")


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2000, help="fresh users (default 2000)")
    parser.add_argument("--seed", type=int, default=10_000, help="users' seed (default 10000: the long-term "
                        "benchmark's evaluation users of its seed 0)")
    parser.add_argument("--policy", action="append", default=[], type=Path, metavar="PATH",
                        help="an LLMSlatePolicy folder, or a run's checkpoints/ppo/{last,best}.pt, to measure (repeatable)")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount of the discounted return (PPO's γ)")
    parser.add_argument("--history-length", type=int, default=20, help="the environment's history (the policies' own)")
    parser.add_argument("--per-cluster", action="store_true",
                        help="also print, per agent, P(shown | a candidate) for each cluster (by mean quality)")
    args = parser.parse_args(argv)
    if args.users < 1:
        parser.error(f"--users {args.users}: must be >= 1")
    if not 0.0 < args.gamma <= 1.0:
        parser.error(f"--gamma {args.gamma}: must be in (0, 1]")
    rows: dict[str, dict[str, Any]] = {}
    builders = dict(REFERENCES)
    for path in args.policy:
        policy_folder(path)  # refuse a bad path before any agent runs
        builders[str(path)] = lambda core, seed, path=path: load_policy_agent(path, core, seed)
    for name, build in builders.items():
        core = make_core(ENV_ID, num_users=args.users, history_length=args.history_length)
        rows[name] = measure(build(core, args.seed), core, args.seed, args.gamma)
    oracle = rows["oracle"]["return"]
    print(f"{ENV_ID}: {args.users} fresh users (seed {args.seed}); † = privileged; quality = hidden quality")
    print(f"{'agent':<36} {'return':>14} {'÷ oracle':>9} {'shown q':>8} {'best 2 q':>9} {'clicked q':>10} {'CTR':>6} "
          f"{'slates':>7} {'disc. return':>12}")
    for name, row in rows.items():
        label = agent_label(name) + ("†" if row["privileged"] else "")
        print(f"{label[:36]:<36} {row['return']:8.1f} ± {row['ci95']:4.1f} {row['return'] / oracle:8.3f}× "
              f"{row['shown_quality']:8.2f} {row['best_two_quality']:9.2f} {row['clicked_quality']:10.2f} "
              f"{row['ctr']:6.3f} {row['slates']:7.1f} {row['discounted_return']:12.1f}")
    if args.per_cluster:
        print_per_cluster(rows, core)
    report = {"users": args.users, "seed": args.seed, "agents": rows}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
