"""Screen PPO settings ("levers") from one CE-pretrained policy, many variants side by side.

Each call trains one variant: PPO from the CE folder ``--ce-dir`` (for example the one
``benchmarks/long_term.py`` pretrains for a seed: ``<out>/seed_0/pretrain.json`` names it) with the
long-term benchmark's PPO settings plus the ``--ppo KEY=VALUE`` changes, until ``--deadline`` seconds
of wall clock or ``--max-steps`` environment steps, whichever comes first. The greedy policy is
evaluated on ``--eval-users`` held-out users (seeded ``--eval-seed``, the same users for every
variant) at the start, every ``--eval-every`` steps and at the end; one JSON line per variant is
appended to ``--out``. Run one process per variant and core (one torch thread each), e.g. on a
many-core machine::

    for s in 0 1 2 3 4; do
      python benchmarks/lever_screen.py --ce-dir CE --variant ctrl --seed $s &
      python benchmarks/lever_screen.py --ce-dir CE --variant ent02 --seed $s --ppo ent_coef=0.02 &
    done; wait

A screen is a filter, not a result: PPO's spread over seeds is wide here (docs/results.md), so
a lever worth keeping is then measured over seeds with ``benchmarks/long_term.py --ppo ...``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def load_long_term():
    """``benchmarks/long_term.py`` (beside this file), whose PPO settings are the screen's control."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("long_term", Path(__file__).with_name("long_term.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmark_ppo_settings(long_term, ce_dir: str) -> tuple[list[str], int]:
    """The long-term benchmark's PPO keys of its fine-tuned agent (``KEY=VALUE``, without its curve settings) and
    its users in parallel."""
    defaults = long_term.parse_args([])
    keys = long_term.agent_overrides(defaults, "ce_ppo", 0, Path(ce_dir))
    settings = [key.removeprefix("ppo.") for key in keys
                if key.startswith("ppo.") and not key.startswith(("ppo.eval_every=", "ppo.eval_users="))]
    return settings, defaults.num_envs


def parse_args(argv=None) -> argparse.Namespace:
    long_term = load_long_term()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ce-dir", required=True, help="CE-pretrained policy folder (config.json + model.safetensors)")
    parser.add_argument("--variant", required=True, help="name of this variant in the results")
    parser.add_argument("--ppo", action="append", default=[], metavar="KEY=VALUE", type=long_term.parse_ppo_setting,
                        help="PPO setting changed from the benchmark's (repeatable)")
    parser.add_argument("--env", default="longrec/Video-v0")
    parser.add_argument("--num-envs", type=int, default=None, help="users in parallel (default: the benchmark's)")
    parser.add_argument("--seed", type=int, default=0, help="PPO seed (sampling, users)")
    parser.add_argument("--deadline", type=float, default=420.0, help="wall-clock seconds from the start (set-up and evaluations included)")
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--eval-every", type=int, default=100_000)
    parser.add_argument("--eval-users", type=int, default=300)
    parser.add_argument("--eval-seed", type=int, default=10_000)
    parser.add_argument("--out", default="runs/lever_screen.jsonl")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    start = time.time()
    args = parse_args(argv)
    import torch

    from agents.baselines import PolicyAgent
    from agents.evaluate import evaluate_agent
    from agents.ppo import MetricsCallback, build_ppo
    from experiments.config import load_config

    torch.set_num_threads(1)
    control, num_envs = benchmark_ppo_settings(load_long_term(), args.ce_dir)
    config = load_config("default", [f"ppo.{setting}" for setting in [*control, *args.ppo]]).ppo
    model = build_ppo(config, env_id=args.env, num_envs=args.num_envs or num_envs, policy="llm", pretrained_path=args.ce_dir,
                      seed=args.seed, device="cpu")
    last: dict[str, float] = {}

    def evaluate() -> None:
        model.policy.set_training_mode(False)
        row = evaluate_agent(PolicyAgent(model.policy), args.env, num_users=args.eval_users, seeds=[args.eval_seed],
                             name=args.variant, progress=False).row
        curve.append((model.num_timesteps, round(row["return"], 1), round(row["return_ci95"], 1)))
        print(args.variant, f"seed {args.seed}", curve[-1], last, f"{time.time() - start:.0f} s", flush=True)

    def sink(metrics: dict[str, float], step: int) -> None:
        last.update({k: round(float(v), 4) for k, v in metrics.items() if k.startswith("losses/")})

    curve: list[tuple[int, float, float]] = []
    evaluate()
    next_eval = args.eval_every
    while time.time() - start < args.deadline and model.num_timesteps < args.max_steps:
        chunk = min(25_600, args.max_steps - model.num_timesteps)
        model.learn(total_timesteps=chunk, callback=MetricsCallback(sink), reset_num_timesteps=False)
        if model.num_timesteps >= next_eval:
            next_eval += args.eval_every
            evaluate()
    if curve[-1][0] != model.num_timesteps:
        evaluate()
    record = {"variant": args.variant, "seed": args.seed, "ppo": args.ppo, "ce_dir": args.ce_dir, "curve": curve,
              "losses": last, "seconds": round(time.time() - start, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:  # one short line per process: appends do not interleave
        f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()
