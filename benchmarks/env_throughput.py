"""Simulator throughput: RecSim's interest_evolution vs ``longrec/InterestEvolution-v0``.

Measures in one run (so the ratios share the machine's load):

* RecSim (Ie et al., 2019) interest_evolution steps/s, one user at a time,
  10 candidates, slate 2 (skipped with a note when recsim is not importable);
* longrec single-user steps/s through ``gymnasium.make`` (same C and K);
* longrec batched user-steps/s through ``envs.make_vec`` at B in {64, 1024, 8192};
* peak memory of building and stepping B = 8192 users with a 10,000-item
  catalog, measured with ``tracemalloc`` (peak of traced Python + numpy
  allocations, which numpy reports to tracemalloc; the interpreter and
  imported modules are not counted).

All runs use pre-drawn random slates, so policy cost is excluded, and include
episode resets. The measurements are interleaved over ``--rounds`` rounds and
the best round of each is reported. Rates are per CPU-second of this process
(``time.process_time``) by default, which other processes on a shared machine
disturb far less than wall time; ``--clock wall`` reports wall-clock rates
(both are printed; on an idle machine they agree, all code is single-threaded). Usage::

    python benchmarks/env_throughput.py            # default run, about 30 seconds
    python benchmarks/env_throughput.py --seconds 3 --rounds 5

The last line printed is one JSON object with keys ``recsim_steps_per_s``,
``single_steps_per_s``, ``batched_user_steps_per_s`` (at the largest B),
``batched_vs_recsim``, ``single_vs_recsim``, ``peak_mem_mib`` (plus
``batched_user_steps_per_s_by_b``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _recsim_peer as peer  # noqa: E402

import envs  # noqa: E402

ENV_ID = "longrec/InterestEvolution-v0"
NUM_CANDIDATES, SLATE_SIZE = 10, 2


def random_slates(num_variants: int, num_users: int, seed: int) -> np.ndarray:
    """(num_variants, num_users, K) valid random slates (distinct candidate indices)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((num_variants, num_users, NUM_CANDIDATES)), axis=2)[..., :SLATE_SIZE]


def timed_loop(step, min_seconds: float, min_steps: int) -> tuple[int, dict[str, float]]:
    """Call ``step(i)`` until both ``min_seconds`` and ``min_steps`` are reached.

    Returns (steps, {"wall": seconds, "cpu": this process's CPU seconds}).
    """
    steps, start, start_cpu = 0, time.perf_counter(), time.process_time()
    while True:
        step(steps)
        steps += 1
        elapsed = time.perf_counter() - start
        if steps >= min_steps and elapsed >= min_seconds:
            return steps, {"wall": elapsed, "cpu": time.process_time() - start_cpu}


def _rates(count: int, seconds: dict[str, float]) -> dict[str, float]:
    return {clock: count / max(value, 1e-9) for clock, value in seconds.items()}


def recsim_steps_per_s(min_seconds: float, seed: int) -> dict[str, float]:
    env = peer.make_recsim_env(NUM_CANDIDATES, SLATE_SIZE, seed)
    slates = [list(s) for s in random_slates(256, 1, seed)[:, 0]]

    def step(i: int) -> None:
        *_, done = env.step(slates[i % 256])
        if done:
            env.reset()

    with peer.global_numpy_seed(seed):
        env.reset()
        step(0)  # warm-up
        steps, seconds = timed_loop(step, min_seconds, 500)
    return _rates(steps, seconds)


def single_steps_per_s(min_seconds: float, seed: int) -> dict[str, float]:
    env = gym.make(ENV_ID, num_candidates=NUM_CANDIDATES, slate_size=SLATE_SIZE)
    slates = random_slates(256, 1, seed)[:, 0]
    env.reset(seed=seed)

    def step(i: int) -> None:
        _, _, terminated, truncated, _ = env.step(slates[i % 256])
        if terminated or truncated:
            env.reset()

    step(0)  # warm-up
    steps, seconds = timed_loop(step, min_seconds, 500)
    env.close()
    return _rates(steps, seconds)


def batched_user_steps_per_s(num_users: int, min_seconds: float, seed: int) -> dict[str, float]:
    vec_env = envs.make_vec(ENV_ID, num_envs=num_users, num_candidates=NUM_CANDIDATES, slate_size=SLATE_SIZE)
    slates = random_slates(8, num_users, seed)
    vec_env.reset(seed=seed)
    for i in range(3):  # warm-up
        vec_env.step(slates[i])
    steps, seconds = timed_loop(lambda i: vec_env.step(slates[i % 8]), min_seconds, 10)
    vec_env.close()
    return _rates(steps * num_users, seconds)


def peak_memory_mib(num_users: int, num_items: int, num_steps: int, seed: int) -> float:
    """tracemalloc peak (MiB) of building B users over an N-item catalog and stepping them."""
    slates = random_slates(4, num_users, seed)
    tracemalloc.start()
    try:
        vec_env = envs.make_vec(
            ENV_ID,
            num_envs=num_users,
            num_candidates=NUM_CANDIDATES,
            slate_size=SLATE_SIZE,
            num_items=num_items,
        )
        vec_env.reset(seed=seed)
        for i in range(num_steps):
            vec_env.step(slates[i % 4])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    vec_env.close()
    return peak / 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per measurement")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; the best round of each measurement is kept"
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024, 8192])
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="rates per CPU-second of this process (robust to other load; the default) or per wall second",
    )
    parser.add_argument("--memory-users", type=int, default=8192)
    parser.add_argument("--memory-items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def best_rates(args: argparse.Namespace, has_recsim: bool) -> dict[str, dict[str, float]]:
    """``{clock: {measurement: best rate over the rounds}}`` for RecSim, single-user and each batch size."""
    # Rounds interleave all measurements so that they share the machine's load; on a
    # shared machine the best round is the least disturbed estimate of each speed.
    best: dict[str, dict[str, float]] = {"wall": {}, "cpu": {}}
    for round_index in range(args.rounds):
        measured: dict[str, dict[str, float]] = {}
        if has_recsim:
            measured["recsim"] = recsim_steps_per_s(args.seconds, args.seed)
        measured["single"] = single_steps_per_s(args.seconds, args.seed)
        for num_users in args.batch_sizes:
            measured[f"B={num_users}"] = batched_user_steps_per_s(num_users, args.seconds, args.seed)
        print(
            f"round {round_index + 1} ({args.clock} clock): "
            + ", ".join(f"{key} {rates[args.clock]:,.0f}" for key, rates in measured.items())
        )
        for key, rates in measured.items():
            for clock, value in rates.items():
                best[clock][key] = max(best[clock].get(key, 0.0), value)
    for clock in ("wall", "cpu"):
        ratios = ""
        if has_recsim:
            ratios = (
                f"  (single {best[clock]['single'] / best[clock]['recsim']:.2f}x, "
                f"B={max(args.batch_sizes)} {best[clock][f'B={max(args.batch_sizes)}'] / best[clock]['recsim']:.0f}x)"
            )
        print(f"best {clock:>4}: " + ", ".join(f"{k} {v:,.0f}" for k, v in best[clock].items()) + ratios)
    return best


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    has_recsim = peer.recsim_available()
    if not has_recsim:
        print("note: recsim is not importable (pip install recsim-no-tf six absl-py gym); ratios skipped")
    chosen = best_rates(args, has_recsim)[args.clock]
    recsim = chosen.get("recsim")
    single = chosen["single"]
    by_b = {str(num_users): chosen[f"B={num_users}"] for num_users in args.batch_sizes}
    batched = by_b[str(max(args.batch_sizes))]
    peak = peak_memory_mib(args.memory_users, args.memory_items, 20, args.seed)
    print(
        f"peak memory (tracemalloc), B={args.memory_users}, {args.memory_items} items, 20 steps: {peak:.1f} MiB"
    )
    result: dict[str, object] = {
        "recsim_steps_per_s": recsim,
        "single_steps_per_s": single,
        "batched_user_steps_per_s": batched,
        "batched_vs_recsim": batched / recsim if recsim else None,
        "single_vs_recsim": single / recsim if recsim else None,
        "peak_mem_mib": peak,
        "batched_user_steps_per_s_by_b": by_b,
        "clock": args.clock,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
