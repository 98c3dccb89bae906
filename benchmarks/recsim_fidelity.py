"""Fidelity of ``longrec/InterestEvolution-v0`` to RecSim's interest_evolution.

Runs three fixed slate policies for N episodes (one user session each) on both
RecSim (Ie et al., 2019; ``recsim-no-tf``) and longrec's batched replica, and
compares the mean episode return (total clicked watch time, minutes):

* ``random``: K distinct candidates uniformly at random;
* ``myopic``: the K candidates with the highest ``interest . features`` using
  the true hidden interests (RecSim's own document score);
* ``quality_oracle``: the K candidates with the highest hidden quality.

Usage::

    python benchmarks/recsim_fidelity.py --num-candidates 10 --slate-size 2 --episodes 500 --seed 0

``--episodes`` RecSim episodes (one user at a time, the slow side) and
``--longrec-episodes`` longrec episodes (one batch) are run per policy.

The last line printed is one JSON object
``{policy: {"longrec": mean, "recsim": mean, "rel_diff": (longrec - recsim) / recsim}}``.
The two simulators use different random streams, so the difference includes
Monte-Carlo noise; the standard errors printed above the JSON size it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _recsim_peer as peer  # noqa: E402

import envs  # noqa: E402

ENV_ID = "longrec/InterestEvolution-v0"


def longrec_returns(
    policy: str, num_candidates: int, slate_size: int, episodes: int, seed: int
) -> np.ndarray:
    """Return of the first episode of each of ``episodes`` users, all simulated in one batch."""
    if policy not in peer.POLICY_FNS:
        raise ValueError(f"unknown policy {policy!r}; valid: {sorted(peer.POLICY_FNS)}")
    vec_env = envs.make_vec(ENV_ID, num_envs=episodes, num_candidates=num_candidates, slate_size=slate_size)
    core = envs.get_core(vec_env)
    vec_env.reset(seed=seed)
    rng = np.random.default_rng(seed + 1)
    topic, quality = core.catalog.topic, core.catalog.quality
    returns = np.zeros(episodes)
    finished = np.zeros(episodes, dtype=bool)
    while not finished.all():
        candidates = core.candidate_item_ids  # (B, C)
        if policy == "random":
            slates = np.argsort(rng.random(candidates.shape), axis=1)[:, :slate_size]
        elif policy == "myopic":
            interest = core.hidden_state()["interest"]  # (B, clusters)
            affinity = np.take_along_axis(interest, topic[candidates], axis=1)
            slates = np.argsort(-affinity, axis=1, kind="stable")[:, :slate_size]
        else:
            slates = np.argsort(-quality[candidates], axis=1, kind="stable")[:, :slate_size]
        _, reward, terminated, truncated, _ = vec_env.step(slates)
        returns += np.where(finished, 0.0, reward)
        finished |= terminated | truncated
    vec_env.close()
    return returns


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-candidates", type=int, default=10, help="C: candidates per step")
    parser.add_argument("--slate-size", type=int, default=2, help="K: slate size (K <= C)")
    parser.add_argument("--episodes", type=int, default=500, help="RecSim episodes (users) per policy")
    parser.add_argument(
        "--longrec-episodes",
        type=int,
        default=5000,
        help="longrec episodes per policy (batched, cheap; more of them make rel_diff's noise mostly RecSim's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.slate_size <= args.num_candidates:
        parser.error(f"--slate-size {args.slate_size} must be in [1, --num-candidates={args.num_candidates}]")
    if min(args.episodes, args.longrec_episodes) < 2:
        parser.error("--episodes and --longrec-episodes must be >= 2")
    if not peer.recsim_available():
        parser.error(
            "recsim is not importable; install the peers extra: pip install recsim-no-tf six absl-py gym"
        )

    print(
        f"C={args.num_candidates} K={args.slate_size} episodes: recsim {args.episodes}, "
        f"longrec {args.longrec_episodes}; seed={args.seed}"
    )
    result: dict[str, dict[str, float]] = {}
    for policy in peer.POLICIES:
        start = time.perf_counter()
        ours = longrec_returns(policy, args.num_candidates, args.slate_size, args.longrec_episodes, args.seed)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = peer.run_recsim_episodes(
            policy, args.num_candidates, args.slate_size, args.episodes, args.seed
        )
        theirs_s = time.perf_counter() - start
        (m_ours, se_ours), (m_theirs, se_theirs) = _mean_se(ours), _mean_se(theirs)
        rel_diff = (m_ours - m_theirs) / m_theirs
        # standard error of the relative difference (independent runs, delta method)
        rel_se = abs(m_ours / m_theirs) * np.hypot(se_ours / m_ours, se_theirs / m_theirs)
        print(
            f"{policy:>15}: longrec {m_ours:7.2f} +- {se_ours:4.2f} ({ours_s:5.1f}s)   "
            f"recsim {m_theirs:7.2f} +- {se_theirs:4.2f} ({theirs_s:5.1f}s)   "
            f"rel_diff {rel_diff:+.4f} +- {rel_se:.4f}"
        )
        result[policy] = {"longrec": m_ours, "recsim": m_theirs, "rel_diff": rel_diff}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
