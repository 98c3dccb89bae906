"""Long-term benchmark: every agent on the same fresh users, over training seeds, with paired differences.

Each (seed, agent) is one ``longrec train`` run (``experiments.jobs.run_train``: the CLI's code path,
its run folder, metrics and checkpoints), so the benchmark adds no pipeline of its own:

1. per seed, logs of ``--behaviour`` on ``--pretrain-users`` users (``agents.logs.generate_logs``, users
   seeded ``seed + 1000``) and one CE pretraining run on them (``longrec pretrain data.path=<logs>``);
2. per seed and agent, ``longrec train agent=<agent>`` (the pretrained agents with ``init_from=`` that
   policy), evaluated on ``--eval-users`` fresh users seeded ``seed + 10000`` (no log or training run saw
   them; every agent of a seed meets the same users);
3. the merge step reads every finished run: mean return across seeds with a 95% CI (Student-t across
   seeds; with one seed, over users), and for each RL agent the paired difference to its CE start
   (``pctr_greedy``), per user within a seed, then across seeds (``agents.stats.paired_difference``), and
   to the same RL from scratch (``ppo_scratch``, ``vs_scratch``) when it ran: whether pretraining pays; and
   to the best non-privileged fixed baseline (``vs_best_baseline``; e.g. ``completion_greedy``);
   with ``--paired-with OTHER_OUT``, also to the same agent in another benchmark folder of the same
   environment and users (``vs_other_out``): a lever's ablation, e.g. ``--ppo clip_range=0.5`` against the
   defaults, paired user by user.

Every finished (seed, agent) is recorded in ``<out>/seed_<s>/<agent>.json`` as it ends, so an interrupted
or split benchmark resumes where it stopped: run seeds or agents in separate processes (or sessions) with
the same ``--out`` and finish with ``--merge-only``. The last line printed is JSON::

    {"agents": {name: {"return", "ci95", "privileged", ...}}, "paired": {name: {"vs", "diff", "ci95"}}, "steps": N}

    python benchmarks/long_term.py --env longrec/Video-v0 --budget-steps 30000 --seeds 0
    python benchmarks/long_term.py --seeds 0-4 --agents ce_ppo pctr_greedy random   # then --merge-only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.registry import AGENT_INFO, AGENTS, PRETRAINED_AGENTS, display_name
from experiments.seeds import parse_seeds

CE_START = "pctr_greedy"
"""the CE-pretrained policy used greedily: the starting point every fine-tuned agent is paired with"""
SCRATCH = "ppo_scratch"
"""the same RL from random initialisation: what pretraining is paired with"""
SLATEQ_NUM_ENVS = 256
"""users in parallel while SlateQ collects experience (PPO uses ``--num-envs``)"""


def parse_ppo_setting(text: str) -> str:
    """``"vf_coef=0.1"`` -> itself; the key is checked by the experiment config when the run starts."""
    key, equals, value = text.partition("=")
    if not equals or not key.isidentifier() or not value:
        raise argparse.ArgumentTypeError(f"--ppo {text!r}: expected KEY=VALUE with a PPOConfig field, e.g. vf_coef=0.1")
    return text


def parse_env_kwarg(text: str) -> tuple[str, Any]:
    """``"history_length=60"`` -> ``("history_length", 60)`` (the value read as JSON, else kept as a string)."""
    key, equals, value = text.partition("=")
    if not equals or not key.isidentifier() or not value:
        raise argparse.ArgumentTypeError(f"--env-kwarg {text!r}: expected KEY=VALUE with an environment option, "
                                         "e.g. history_length=60")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="longrec/Video-v0")
    parser.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE", type=parse_env_kwarg,
                        help="an environment option for every log, run and evaluation, e.g. history_length=60")
    parser.add_argument("--budget-steps", type=int, default=1_000_000, help="env steps per learning agent")
    parser.add_argument("--eval-users", type=int, default=2000, help="fresh users per agent and seed")
    parser.add_argument("--seeds", type=parse_seeds, default=[0], help="training seeds: 0-4, 0,1,2 or 3 (default 0)")
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--behaviour", default="logger",
                        help="behaviour policy of the pretraining logs (default: the production logger, non-privileged)")
    parser.add_argument("--target", default="click", choices=("slate", "click"), help="CE pretraining target")
    parser.add_argument("--model", default="tiny", choices=("tiny", "small", "base"), help="LLM policy size")
    parser.add_argument("--text-encoder", default="minilm",
                        help="item-text encoder of the LLM policy (text.encoder: minilm, or tiny for smoke runs)")
    parser.add_argument("--item-statistics", default="on", choices=("on", "off"),
                        help="the LLM policy reads each item's logged engagement statistics next to its text "
                             "(policy.item_statistics; agents.item_statistics); 'off': text alone")
    parser.add_argument("--pretrain-users", type=int, default=400, help="logged users for CE pretraining")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--pretrain-batches", type=int, default=150, help="max batches per pretraining epoch")
    parser.add_argument("--num-envs", type=int, default=64, help="parallel users during PPO training")
    parser.add_argument("--n-steps", type=int, default=32, help="PPO rollout length per user")
    parser.add_argument("--ce-learning-rate", type=float, default=3e-4,
                        help="PPO step size from the CE policy (default: the same as from scratch)")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="PPO step size from scratch")
    parser.add_argument("--ent-coef", type=float, default=0.01, help="PPO entropy bonus (the slate's summed entropy)")
    parser.add_argument("--ppo", action="append", default=[], metavar="KEY=VALUE", type=parse_ppo_setting,
                        help="any other PPO setting for every PPO agent (repeatable: --ppo vf_coef=0.1 --ppo max_grad_norm=5)")
    parser.add_argument("--eval-every", type=int, default=100_000,
                        help="steps between held-out evaluations of PPO agents (the learning curve; 0 = off)")
    parser.add_argument("--curve-users", type=int, default=200, help="held-out users of each curve point")
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--kl-target", type=float, default=None, help="adaptive KL target (default: fixed)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--wandb", action="store_true", help="log every run to W&B (offline unless logged in)")
    parser.add_argument("--out", default=None, help="output folder (default runs/long_term/<env>)")
    parser.add_argument("--merge-only", action="store_true", help="only aggregate the finished runs under --out")
    parser.add_argument("--paired-with", default=None, metavar="OUT",
                        help="another benchmark folder (same seeds and users, other settings, e.g. an ablation's): the "
                             "merge also pairs each fine-tuned agent with the same agent there")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out or f"runs/long_term/{args.env.replace('/', '_')}")
    if not args.merge_only:
        for seed in args.seeds:
            run_seed(args, seed, out / f"seed_{seed}")
    return merge(args, out)


# --------------------------------------------------------------------------- one seed


def common_overrides(args: argparse.Namespace, seed: int, runs_dir: Path) -> list[str]:
    """Keys every run of a seed shares (environment, seed, device, run folders)."""
    return [f"env.id={args.env}", f"seed={seed}", f"device={args.device}", f"torch_threads={args.threads}",
            f"logging.runs_dir={runs_dir}", f"logging.wandb={str(args.wandb).lower()}", "logging.progress=false",
            *env_overrides(dict(args.env_kwarg))]


def policy_overrides(args: argparse.Namespace) -> list[str]:
    from agents.ppo import LLM_SIZES

    return [f"policy.{key}={value}" for key, value in LLM_SIZES[args.model].items()] + [
        f"text.encoder={args.text_encoder}", f"policy.item_statistics={str(args.item_statistics == 'on').lower()}"]


def agent_overrides(args: argparse.Namespace, agent: str, seed: int, policy_dir: Path | None) -> list[str]:
    """What ``longrec train agent=<agent>`` reads beyond the common keys (it refuses anything else)."""
    info = AGENT_INFO[agent]
    keys = [f"agent={agent}", f"eval.num_users={args.eval_users}", f"eval.seeds=[{seed + 10_000}]", "eval.baselines=[]"]
    if info.from_pretrained:
        keys.append(f"init_from={policy_dir}")
    if info.trainer == "slateq":
        keys += [f"total_timesteps={args.budget_steps}", f"env.num_envs={SLATEQ_NUM_ENVS}"]
    elif info.trainer == "ppo":
        learning_rate = args.ce_learning_rate if info.from_pretrained else args.learning_rate
        keys += [f"total_timesteps={args.budget_steps}", f"env.num_envs={args.num_envs}",
                 f"ppo.n_steps={args.n_steps}", "ppo.batch_size=512", "ppo.n_epochs=4",
                 f"ppo.learning_rate={learning_rate}", f"ppo.ent_coef={args.ent_coef}",
                 f"ppo.eval_every={args.eval_every}", f"ppo.eval_users={args.curve_users}",
                 *(f"ppo.{setting}" for setting in args.ppo)]
        if agent == "ppo_scratch":
            keys += policy_overrides(args)
        if agent == "ce_ppo_kl":
            keys += [f"kl.coef={args.kl_coef}", f"kl.target={'null' if args.kl_target is None else args.kl_target}"]
    return keys


def env_overrides(env_kwargs: dict[str, Any]) -> list[str]:
    """``env.kwargs.<key>=<value>`` overrides of environment options."""
    return [f"env.kwargs.{key}={json.dumps(value)}" for key, value in env_kwargs.items()]


def run_job(job: str, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """``longrec <job> <overrides>`` in this process: the run folder and the job's result."""
    from experiments import jobs
    from experiments.config import load_config
    from experiments.run import Run

    cfg = load_config("default", overrides, check_env_id=True)
    jobs.check_config(job, cfg)
    with Run.create(cfg, job_type=job) as run:
        result = jobs.JOBS[job](cfg, run)
    return run.path, result


def pretrain_for_seed(args: argparse.Namespace, seed: int, seed_dir: Path, env_kwargs: dict[str, Any] | None = None
                      ) -> Path:
    """The CE-pretrained policy folder of ``seed`` (logs and pretraining run made once, then reused); ``env_kwargs``
    configure the environment (e.g. ``{"catalog_seed": 1}``, another catalog)."""
    from agents.logs import generate_logs

    record = seed_dir / "pretrain.json"
    if record.exists():
        return Path(json.loads(record.read_text())["policy_dir"])
    start = time.perf_counter()
    logs = seed_dir / "logs.npz"
    kwargs = dict(env_kwargs or {})
    generate_logs(args.env, num_users=args.pretrain_users, seed=seed + 1000, path=logs, behaviour=args.behaviour,
                  **{**dict(args.env_kwarg), **kwargs})
    overrides = [*common_overrides(args, seed, seed_dir / "runs"), f"data.path={logs}", *policy_overrides(args),
                 f"pretrain.target={args.target}", f"pretrain.epochs={args.pretrain_epochs}",
                 "pretrain.batch_size=256", "pretrain.val_fraction=0.2", "pretrain.patience=3",
                 f"pretrain.max_batches_per_epoch={args.pretrain_batches}", *env_overrides(kwargs)]
    run_dir, result = run_job("pretrain", overrides)
    metrics = result["metrics"]
    seconds = time.perf_counter() - start
    print(f"seed {seed}: CE pretraining ({args.behaviour} logs, target {args.target}): val ndcg@10 "
          f"{metrics['pretrain/val_before/ndcg@10']:.3f} -> {metrics['pretrain/val/ndcg@10']:.3f} ({seconds:.0f} s)",
          flush=True)
    _write_json(record, {"policy_dir": str(result["policy_dir"]), "run": str(run_dir), "seconds": seconds})
    return Path(result["policy_dir"])


def run_seed(args: argparse.Namespace, seed: int, seed_dir: Path) -> None:
    """Every wanted agent of ``seed`` not finished yet, each saved as it ends."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    wanted = [agent for agent in AGENTS if agent in args.agents]
    if args.item_statistics == "off" and "completion_greedy" in wanted:
        print(f"seed {seed}: completion_greedy skipped: it ranks by logged item statistics (--item-statistics off)",
              flush=True)
        wanted.remove("completion_greedy")
    policy_dir = pretrain_for_seed(args, seed, seed_dir) if set(wanted) & set(PRETRAINED_AGENTS) else None
    for agent in wanted:
        record = seed_dir / f"{agent}.json"
        if record.exists():
            continue
        start = time.perf_counter()
        overrides = [*common_overrides(args, seed, seed_dir / "runs"), *agent_overrides(args, agent, seed, policy_dir)]
        run_dir, result = run_job("train", overrides)
        seconds = time.perf_counter() - start
        row = result["agents"][agent]
        steps = 0 if AGENT_INFO[agent].trainer == "none" else args.budget_steps
        print(f"seed {seed}: {agent} return {row['return']:.1f} ± {row['return_ci95']:.1f} "
              f"({steps} training steps, {seconds:.0f} s)", flush=True)
        _write_json(record, {"agent": agent, "seed": seed, "run": str(run_dir), "row": row, "steps": steps,
                             "seconds": seconds})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from envs.atomic_file import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- merge


def finished_runs(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{agent: {seed: record}}`` of every finished (seed, agent) under ``out``."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(out.glob("seed_*/*.json")):
        record = json.loads(path.read_text())
        if "agent" in record:
            runs.setdefault(record["agent"], {})[int(record["seed"])] = record
    return runs


def per_user_returns(record: dict[str, Any]) -> np.ndarray:
    from experiments.jobs import load_per_user

    return load_per_user(record["run"])[f"{record['agent']}/return"]


def merge(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Aggregate the finished runs under ``out``: table, learning curves, paired differences, JSON line."""
    from agents.stats import paired_difference, t_ci95

    runs = finished_runs(out)
    agents: dict[str, dict[str, Any]] = {}
    for agent in (a for a in AGENTS if a in runs):
        by_seed = runs[agent]
        rows = [record["row"] for record in by_seed.values()]
        mean, half = t_ci95([row["return"] for row in rows])
        if len(rows) == 1:
            half = rows[0]["return_ci95"]
        agents[agent] = {"return": mean, "ci95": half, "privileged": AGENT_INFO[agent].privileged,
                         "seeds": sorted(by_seed), **{m: float(np.mean([row[m] for row in rows]))
                                                       for m in ("ctr", "retention", "sessions", "final_satisfaction")}}
    def pair(agent: str, other: str, other_runs: dict[str, dict[int, dict[str, Any]]] = runs) -> dict[str, Any] | None:
        seeds = sorted(set(runs[agent]) & set(other_runs.get(other, {})))
        if not seeds:
            return None
        result = paired_difference([per_user_returns(runs[agent][s]) for s in seeds],
                                   [per_user_returns(other_runs[other][s]) for s in seeds])
        return {"vs": other, "diff": result.diff, "ci95": result.ci95, "seeds": seeds,
                "positive_in_every_seed": result.positive_in_every_seed}

    def summary(result: dict[str, Any]) -> dict[str, Any]:
        return {key: result[key] for key in ("diff", "ci95", "seeds", "positive_in_every_seed")}

    other_out = finished_runs(Path(args.paired_with)) if args.paired_with else {}
    paired = {}
    for agent in (a for a in agents if AGENT_INFO[a].from_pretrained and AGENT_INFO[a].trainer != "none"):
        start = pair(agent, CE_START)
        if start is None:
            continue
        paired[agent] = {**start, "ratio_to_start": agents[agent]["return"] / agents[CE_START]["return"]}
        scratch = pair(agent, SCRATCH)  # does pretraining pay: the same RL from random initialisation
        if scratch is not None:
            paired[agent]["vs_scratch"] = summary(scratch)
        other = pair(agent, agent, other_out)  # --paired-with: the same agent, seeds and users, other settings
        if other is not None:
            paired[agent]["vs_other_out"] = {"out": args.paired_with, **summary(other)}
    references = [a for a in agents if AGENT_INFO[a].trainer == "none" and not AGENT_INFO[a].privileged
                  and a != CE_START]
    if references:
        best = max(references, key=lambda a: agents[a]["return"])
        for agent, row in paired.items():
            row["best_baseline"] = best
            row["ratio_to_best_baseline"] = agents[agent]["return"] / agents[best]["return"]
            versus_best = pair(agent, best)  # the same users: does RL beat what it is measured against?
            if versus_best is not None:
                row["vs_best_baseline"] = summary(versus_best)
    curves = mean_curves(runs)
    for agent, steps in steps_to_80_percent(curves).items():
        agents[agent]["steps_to_80pct"] = steps
    for agent, steps in steps_to_scratch_80_percent(curves).items():
        agents[agent]["steps_to_scratch_80pct"] = steps
    steps = max((record["steps"] for by_seed in runs.values() for record in by_seed.values()), default=0)
    users = sorted({int(record["row"].get("num_users", args.eval_users)) for by_seed in runs.values()
                    for record in by_seed.values()})
    print_table(args.env, users, steps, agents, paired)
    plot_learning_curves(runs, out)
    summary = {"agents": agents, "paired": paired, "steps": steps}
    print(json.dumps(summary))
    return summary


Curves = dict[str, tuple[np.ndarray, np.ndarray]]
"""each learning agent's seed-mean held-out curve, (steps, returns): :func:`mean_curves`"""


def steps_to_80_percent(curves: Curves) -> dict[str, int]:
    """For each learning agent with held-out curves: the first step at which its seed-mean curve reaches 80% of
    its final return ("pretraining pays" when CE -> RL gets there before the same RL from scratch)."""
    return {agent: first_step_at(curve, 0.8 * curve[1][-1]) for agent, curve in curves.items()}


def steps_to_scratch_80_percent(curves: Curves) -> dict[str, int | None]:
    """The same clock for every learning agent: the first step at which its seed-mean curve reaches 80% of
    ``ppo_scratch``'s final return (None if never). Unlike :func:`steps_to_80_percent`, a higher final return
    does not move an agent's own finishing line."""
    if "ppo_scratch" not in curves:
        return {}
    target = 0.8 * curves["ppo_scratch"][1][-1]
    return {agent: first_step_at(curve, target) for agent, curve in curves.items()}


def first_step_at(curve: tuple[np.ndarray, np.ndarray], level: float) -> int | None:
    """The first step of ``curve`` (steps, values) whose value reaches ``level``; None if none does."""
    steps, values = curve
    reached = np.flatnonzero(values >= level)
    return int(steps[reached[0]]) if reached.size else None


def mean_curves(runs: dict[str, dict[int, dict[str, Any]]]) -> Curves:
    """Each learning agent's held-out return curve, averaged over its seeds (agents whose seeds' evaluation
    steps differ are left out)."""
    from experiments.compare import curve_data, load_records

    out = {}
    for agent, by_seed in runs.items():
        if AGENT_INFO[agent].trainer == "none":
            continue
        records, _ = load_records([record["run"] for record in by_seed.values()])
        curves = [c for runs_ in curve_data(records, "heldout/return").values() for c in runs_]
        if not curves or any(len(c[0]) != len(curves[0][0]) for c in curves):
            continue
        out[agent] = (np.asarray(curves[0][0]), np.mean([c[1] for c in curves], axis=0))
    return out


def print_table(env: str, users: list[int], steps: int, agents: dict[str, dict[str, Any]],
                paired: dict[str, dict[str, Any]]) -> None:
    """The merged table (``users``: the fresh users per agent and seed of the runs; ``steps``: their training budget)."""
    print(f"\n{env}: {'/'.join(map(str, users))} fresh users per agent and seed, {steps} training steps per learning agent; "
          "return: mean over seeds, 95% CI across seeds (over users with one seed); † = privileged")
    width = max([14, *(len(display_name(name)) + 2 for name in agents)])
    header = f"{'agent':<{width}}{'seeds':>6}{'return':>20}{'sessions':>10}{'retention':>11}{'CTR':>8}{'final sat':>11}"
    print(header)
    print("-" * len(header))
    for name, row in agents.items():
        print(f"{display_name(name):<{width}}{len(row['seeds']):>6}{row['return']:>11.1f} ± {row['ci95']:<6.1f}"
              f"{row['sessions']:>10.2f}{row['retention']:>11.3f}{row['ctr']:>8.3f}{row['final_satisfaction']:>11.3f}")
    for name, row in agents.items():
        if "steps_to_80pct" in row:
            print(f"{name}: held-out return first reaches 80% of its final value at {row['steps_to_80pct']} steps")
        if "steps_to_scratch_80pct" in row:
            print(f"{name}: held-out return first reaches 80% of ppo_scratch's final value at "
                  f"{row['steps_to_scratch_80pct']} steps")
    for name, row in paired.items():
        print(f"{name} - {row['vs']} (paired per user, {len(row['seeds'])} seed(s)): {row['diff']:+.1f} ± "
              f"{row['ci95']:.1f}; positive in every seed: {row['positive_in_every_seed']}; "
              f"{row['ratio_to_start']:.2f}x its CE start"
              + (f", {row['ratio_to_best_baseline']:.2f}x the best non-privileged baseline ({row['best_baseline']})"
                 if "best_baseline" in row else ""))
        for key, versus in (("vs_best_baseline", row.get("best_baseline")), ("vs_scratch", SCRATCH),
                            ("vs_other_out", f"{name} of {row.get('vs_other_out', {}).get('out')}")):
            if key in row:
                other = row[key]
                print(f"{name} - {versus} (paired per user, {len(other['seeds'])} seed(s)): {other['diff']:+.1f} ± "
                      f"{other['ci95']:.1f}; positive in every seed: {other['positive_in_every_seed']}")


def plot_learning_curves(runs: dict[str, dict[int, dict[str, Any]]], out: Path) -> None:
    """``learning_curves.png``: the training curves of the learning agents' runs (``experiments.compare``)."""
    from experiments.compare import CompareError, load_records, plot_curves
    from experiments.jobs import CURVE_METRICS

    folders = [record["run"] for agent, by_seed in runs.items() if AGENT_INFO[agent].trainer != "none"
               for record in by_seed.values()]
    if not folders:
        return
    try:
        records, _ = load_records(folders)
    except CompareError:
        return
    for metric in CURVE_METRICS:  # held-out evaluation first; the finished-episode average only without it
        path = plot_curves(records, metric, out / "learning_curves.png")
        if path is not None:
            print(f"learning curves ({metric}): {path}")
            return


if __name__ == "__main__":
    main()
