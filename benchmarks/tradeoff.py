"""The clickbait trap, per preset: CTR vs long-term return of three fixed policies.

For every long-horizon preset, ``random``, ``myopic`` (maximise immediate click
utility with the true choice model) and ``quality_aware`` (ranks by hidden
quality + interest - appeal) each live with ``--users`` fresh users for one
whole life. Prints CTR and long-term return per user with 95% confidence
intervals, the ratio quality_aware / myopic (target >= 1.3) and the text AUC
(bag-of-words logistic regression predicting quality above the median from
item texts; target in [0.70, 0.95]). Last line: one JSON object.

    python benchmarks/tradeoff.py --users 2000
"""

from __future__ import annotations

import argparse
import json

import envs
from agents.logs import behaviour_lives
from agents.stats import mean_ci95
from envs.text import text_quality_auc

POLICIES = ("random", "myopic", "quality_aware")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=2000, help="users per policy and preset (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--envs", nargs="*", default=None, help="preset ids (default: all long-horizon ones)")
    args = parser.parse_args()
    env_ids = args.envs or [i for i in envs.registered_ids() if "InterestEvolution" not in i]
    report: dict[str, dict] = {}
    for env_id in env_ids:
        row: dict[str, dict] = {}
        for policy in POLICIES:
            core = envs.make_core(env_id, num_users=args.users)
            lives = behaviour_lives(core, policy, seed=args.seed).values
            ret, ret_ci = mean_ci95(lives["return"])
            ctr, ctr_ci = mean_ci95(lives["ctr"])
            sessions, _ = mean_ci95(lives["sessions"])
            row[policy] = {
                "return": ret,
                "return_ci95": ret_ci,
                "ctr": ctr,
                "ctr_ci95": ctr_ci,
                "sessions": sessions,
            }
        catalog = envs.make_core(env_id).catalog
        auc = text_quality_auc(list(catalog.texts), catalog.quality, seed=args.seed)
        ratio = row["quality_aware"]["return"] / row["myopic"]["return"]
        report[env_id] = {**row, "aware_vs_myopic": ratio, "text_auc": auc}
        print(f"\n{env_id}  (users={args.users}, seed={args.seed})")
        print(f"{'policy':<14}{'CTR':>16}{'long-term return':>24}{'sessions':>10}")
        for policy in POLICIES:
            r = row[policy]
            print(
                f"{policy:<14}{r['ctr']:>9.3f} ± {r['ctr_ci95']:.3f}"
                f"{r['return']:>15.1f} ± {r['return_ci95']:<6.1f}{r['sessions']:>10.2f}"
            )
        print(f"quality_aware / myopic return = {ratio:.2f} (target >= 1.3); text AUC = {auc:.3f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
