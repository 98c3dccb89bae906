"""``longrec``: the command line of the project (also ``python -m experiments``).

Subcommands follow the research loop: ``envs`` (what can I simulate), ``quickstart``
(the whole pipeline, small), ``pretrain`` / ``train`` / ``eval`` (one run each, into
``runs/<env>__<agent>__<seed>__<time>/``), ``sweep`` (many runs, locally or on W&B
agents), ``compare`` (tables and plots across runs) and ``bench`` (the benchmark
scripts). Configs are YAML files plus ``key=value`` overrides, validated before any
work starts (``experiments.config``).
"""

from __future__ import annotations

import argparse
import ast
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agents.registry import AGENTS, FIXED_AGENTS
from experiments.config import (
    ConfigError,
    ExperimentConfig,
    available_configs,
    check_registered_env,
    describe_keys,
    load_config,
)
from experiments.seeds import parse_seeds

if TYPE_CHECKING:
    from experiments.sweep_ray import RayOptions

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
LEARNED = tuple(a for a in AGENTS if a not in FIXED_AGENTS)
BACKENDS = ("local", "wandb", "ray")

EXAMPLES = {
    "train": """\
examples:
  longrec train                                          # CE -> PPO + KL on longrec/Video-v0 (config: default)
  longrec train -c video agent=ppo_scratch seed=1
  longrec train -c smoke --seeds 0-4 --workers 2         # one run per seed, then the cross-seed table
  longrec train -c smoke --seeds 0-4 --backend ray --address auto   # the seeds as Ray Tune trials on a cluster
  longrec train ppo.learning_rate=1e-4 kl.coef=0.1 env.id=longrec/News-v0
  longrec train -c quickstart --dry-run                  # print the resolved config and stop
  longrec train --list-keys                              # every config key with its type, default and meaning""",
    "pretrain": """\
examples:
  longrec pretrain                                       # logs of a behaviour policy on Video-v0 -> CE pretraining
  longrec pretrain data.num_users=5000 pretrain.epochs=10
  longrec pretrain -c movielens data.path=data/ml-latest-small
  longrec pretrain --nproc 2                             # data-parallel in 2 processes (DDP), same global batch
  longrec pretrain --resume runs/Video-v0__ce_ppo_kl__0__<time>   # continue a stopped pretraining
  # on each of 2 machines, K = 0 on HOST (which writes the run folder) and 1 on the other:
  torchrun --nnodes 2 --node_rank K --nproc_per_node 8 --rdzv_endpoint HOST:29500 -m experiments pretrain""",
    "eval": """\
examples:
  longrec eval agent=myopic eval.num_users=2000
  longrec eval -c smoke_eval agent=random                 # seconds: 20 users
  longrec eval agent=ce_ppo_kl --checkpoint runs/Video-v0__ce_ppo_kl__0__<time>/checkpoints/final_policy
  longrec eval agent=oracle eval.seeds=[1000,1001,1002] env.id=longrec/Music-v0""",
    "quickstart": """\
examples:
  longrec quickstart                                     # the README's first command (<= 15 min on 2 CPU cores)
  longrec quickstart --no-wandb --quiet
  longrec quickstart device=cuda total_timesteps=500000""",
    "sweep": """\
sweep files use W&B's sweep YAML (method grid|random|bayes, metric, parameters with dotted
config keys); experiments/sweeps/ has examples. The local backend writes
runs/sweeps/<name>__<time>/ with one run folder per trial, trials.jsonl and the ranked
results.md / results.csv. Each trial runs in its own process: a trial that fails or is killed
(out of memory) is recorded as failed and the others run on; the exit code is 1 when any
trial failed. --resume reruns a sweep folder's unfinished trials with its stored settings.
--backend ray runs the same trials as Ray Tune trials (pip install -e .[ray]) in the same
sweep folder: on a local Ray of --workers CPUs, or on a cluster with --address.

examples:
  longrec sweep experiments/sweeps/kl_lr.yaml --backend local --workers 2
  longrec sweep tiny --workers 2 logging.wandb=false     # overrides apply to every trial
  longrec sweep kl_lr_bayes --backend local --count 20   # bayes needs `pip install optuna`
  longrec sweep --resume runs/sweeps/kl_lr__<time>       # rerun its failed / unfinished trials only
  longrec sweep kl_lr --backend ray --workers 4          # Ray Tune trials on a local Ray of 4 CPUs
  longrec sweep kl_lr --backend ray --address auto --gpus-per-trial 0.5   # on a cluster (`ray start` first)
  longrec sweep kl_lr --backend wandb --workers 1        # registers the sweep, starts 1 agent here
  longrec sweep --backend wandb --sweep-id ENTITY/PROJECT/ID --workers 4   # join it from another machine""",
    "compare": """\
examples:
  longrec compare runs/Video-v0__*                       # every run of Video-v0
  longrec compare runs/sweeps/kl_lr__<time> --by kl.coef,ppo.learning_rate
  longrec compare RUN_A RUN_B --out reports/ab --curve-metric charts/episodic_return
  longrec compare runs/seeds/Video-v0__ce_ppo__<time> runs/seeds/Video-v0__ppo_scratch__<time> --reference ppo_scratch
  longrec compare runs/ --metric retention --wandb          # the tables and plots also as a W&B run""",
    "explain": """\
writes <out>/report.html with figures/*.png (attributions, user lives, fingerprints, surrogate) and
explain.json; a run folder explains its final (RL) policy next to its CE-pretrained start.

examples:
  longrec explain runs/Video-v0__quickstart__0__<time>             # RL vs its CE start, 16 fresh users
  longrec explain runs/Video-v0__ce_ppo__0__<time> --users 32 --seed 7 --wandb
  longrec explain RUN --compare runs/Video-v0__ppo_scratch__0__<time>   # against another run's policy
  longrec explain --policy runs/my_policy --env longrec/Video-v0 --env-kwarg num_items=200""",
    "runs": """\
examples:
  longrec runs                                           # every run under runs/: status, agent, env, seed, steps, result
  longrec runs runs/sweeps/kl_lr__<time>
  longrec train --resume runs/Video-v0__ce_ppo__0__<time>   # continue a stopped run in its folder""",
    "bench": """\
examples:
  longrec bench                                          # list the benchmark scripts
  longrec bench env_throughput
  longrec bench tradeoff -- --users 2000                 # arguments after -- go to the script""",
    "envs": """\
examples:
  longrec envs
  longrec train env.id=longrec/Ecommerce-v0""",
}


# --------------------------------------------------------------------------- parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)


def _add_config_args(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. ppo.learning_rate=1e-4 env.id=longrec/News-v0")
    parser.add_argument("-c", "--config", default=default, metavar="NAME|PATH",
                        help=f"YAML config: a shipped name ({', '.join(available_configs())}) or a path "
                             f"(default: {default})")
    parser.add_argument("--runs-dir", metavar="DIR", help="parent folder of run folders (logging.runs_dir)")
    parser.add_argument("--no-wandb", action="store_true", help="turn W&B off (logging.wandb=false)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--list-keys", action="store_true", help="list every config key (type, default, meaning)")


def _add_ray_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", metavar="ADDR",
                        help="--backend ray: a running Ray cluster, auto (from one of its nodes), HOST:PORT or "
                             "ray://HOST:PORT (default: start a local Ray with --workers CPUs)")
    parser.add_argument("--cpus-per-trial", type=float, metavar="N", help="--backend ray: CPUs per trial (default: 1)")
    parser.add_argument("--gpus-per-trial", type=float, metavar="N",
                        help="--backend ray: GPUs per trial; a fraction shares a GPU (default: 0)")


def _ray_options(args: argparse.Namespace) -> RayOptions | None:
    """RayOptions of ``--backend ray`` (None for another backend, where the Ray flags are an error)."""
    from experiments.sweep import SweepError

    flags = {"--address": args.address, "--cpus-per-trial": args.cpus_per_trial, "--gpus-per-trial": args.gpus_per_trial}
    given = [f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"
             for flag, value in flags.items() if value is not None]
    if args.backend != "ray":
        if given:
            raise SweepError(f"{given[0]} applies only to --backend ray; got --backend {args.backend} "
                             f"(backends: {', '.join(BACKENDS)})")
        return None
    from experiments.sweep_ray import RayOptions

    return RayOptions(args.address, args.workers, 1.0 if args.cpus_per_trial is None else args.cpus_per_trial,
                      0.0 if args.gpus_per_trial is None else args.gpus_per_trial)


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars; print only the essentials (for scripts)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longrec", formatter_class=_Formatter,
        description="longrec: recommenders that optimise long-term user satisfaction -- a batched user "
                    "simulator, an LLM slate policy, CE pretraining and PPO fine-tuning.",
        epilog="run `longrec COMMAND --help` for the options and examples of a command.\n"
               "start with: longrec quickstart")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars; essentials only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=textwrap.fill(description, 96), epilog=EXAMPLES[name],
                           formatter_class=_Formatter)
        _add_quiet(p)
        return p

    p = add("quickstart", "the main job: logs -> CE pretraining -> PPO + KL -> comparison with baselines",
            "Run the whole pipeline small on longrec/Video-v0: generate logs with a behaviour policy, "
            "CE-pretrain the LLM policy (MiniLM item texts), fine-tune it with PPO + KL, evaluate it "
            "against random, myopic greedy, pCTR greedy and the oracle; print the comparison table, "
            "save a plot, and print the run folder.")
    _add_config_args(p, "quickstart")
    p = add("train", "train an agent (CE pretraining first where needed), then evaluate it",
            f"Train agent=<name> ({', '.join(LEARNED)}; fixed policies ({', '.join(FIXED_AGENTS)}) are just "
            "evaluated) on env.id and evaluate it with eval.baselines on fresh users. A key the agent would not "
            "read (e.g. ppo.* for agent=random) is an error. "
            "Writes runs/<env>__<agent>__<seed>__<time>/ (config.yaml, metrics.jsonl, checkpoints/, "
            "summary.json, plots/) and logs to W&B (offline unless logged in).")
    _add_config_args(p, "default")
    p.add_argument("--seeds", type=parse_seeds, metavar="SEEDS",
                   help="one run per training seed: a range (0-4) or a list (0,1,2); the same as the config key "
                        "seeds; ends with the cross-seed table (mean ± CI, IQM, probability of improvement)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="with --seeds: runs in parallel here (local), W&B agents started here (wandb) or CPUs of "
                        "the local Ray (ray) (default: 1)")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="with --seeds: local process pool, a W&B sweep over the seeds run by W&B agents, or Ray "
                        "Tune trials")
    _add_ray_args(p)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped run (Ctrl-C, killed, failed) in its folder, from its last checkpoint, "
                        "with its own config (the same as the config key resume)")
    p.add_argument("--nproc", type=int, default=1, metavar="N", help=argparse.SUPPRESS)  # refused: pretrain's
    p = add("pretrain", "cross-entropy pretraining of the LLM policy on logs or MovieLens",
            "Cross-entropy pretraining (behaviour cloning of logged slates, or next-item prediction) "
            "of the LLM slate policy on simulator logs (data.source=simulator) or real data "
            "(data.source=movielens, data.path=...). Saves the policy under checkpoints/pretrained.")
    _add_config_args(p, "default")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train data-parallel in N processes on this machine (torchrun + DistributedDataParallel; "
                        "gloo on CPU, NCCL on GPU): each takes its share of every batch of pretrain.batch_size "
                        "rows, rank 0 writes the run (default: 1, this process)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped pretraining run in its folder from its last finished epoch, with its "
                        "own config (also with --nproc)")
    p = add("eval", "evaluate agents on fresh users (long-term return, retention, CTR, with 95%% CIs)",
            "Evaluate agent=<name> (from --checkpoint / eval.checkpoint for learned agents) and "
            "eval.baselines on eval.num_users fresh users per eval seed.")
    _add_config_args(p, "default")
    p.add_argument("--checkpoint", metavar="PATH", help="policy checkpoint to evaluate (eval.checkpoint)")
    p = add("sweep", "hyperparameter sweep (W&B sweep YAML) on a local process pool, W&B agents or Ray Tune",
            "Run a hyperparameter sweep written in W&B's sweep format.")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="sweep YAML (a path or a name in experiments/sweeps/: kl_lr, kl_lr_bayes, tiny)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every trial")
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local: process pool here; wandb: wandb.sweep + `wandb agent` processes; ray: Ray Tune "
                        "trials on a local Ray or a cluster (default: local)")
    _add_ray_args(p)
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="parallel trials (local), W&B agents started on this machine (wandb) or CPUs of the "
                        "local Ray (ray) (default: 1)")
    p.add_argument("--count", type=int, metavar="N",
                   help="number of trials (random/bayes; caps grid); per agent with --backend wandb")
    p.add_argument("--seed", type=int, help="seed of the random / bayes sampler (default: 0)")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default: runs/sweeps/<name>__<time>)")
    p.add_argument("--runs-dir", metavar="DIR", help="parent of runs/sweeps (default: runs)")
    p.add_argument("--resume", metavar="SWEEP_FOLDER",
                   help="local or ray: rerun only the unfinished (failed, interrupted, never started) trials of that "
                        "sweep folder, with its stored sweep.yaml, count, seed and overrides")
    p.add_argument("--project", default="longrec", help="W&B project (wandb backend)")
    p.add_argument("--entity", help="W&B entity (wandb backend)")
    p.add_argument("--sweep-id", metavar="ID", help="join an existing W&B sweep (ENTITY/PROJECT/ID) instead of "
                                                    "registering FILE")
    p = add("compare", "compare runs: 95%% CIs, IQM, probability of improvement, paired differences, plots",
            "Aggregate finished runs (run folders, or folders holding them such as a sweep folder) "
            "per agent: mean and Student-t 95% CI across seeds per metric; the interquartile mean with a "
            "stratified-bootstrap CI, the probability of improvement over a reference agent and the paired "
            "per-user difference to it where the evaluation users match (rliable; Agarwal et al. 2021); "
            "learning curves with confidence bands, a performance profile, and long-term return / retention / "
            "CTR bars. One row per agent (runs of different agents never share a row; --by splits further), "
            "with the experiment names of its runs as a column. A --metric, --metrics or --curve-metric that "
            "none of the runs logged is an error naming the available ones. Writes compare.md, compare.csv, "
            "compare_robust.csv and plots/*.png.")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders or folders holding them")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <sweep>/compare or runs/compare__<time>)")
    p.add_argument("--by", metavar="KEYS",
                   help="split each agent's runs into rows by 'run', 'experiment' (the config name), or config "
                        "keys, e.g. kl.coef,ppo.learning_rate (default: agent, one row per agent; for a sweep "
                        "folder, the swept keys other than seed)")
    p.add_argument("--curve-metric", default="heldout/return", metavar="NAME",
                   help="metrics.jsonl key of the learning curves, logged by at least one run (default: "
                        "heldout/return, the periodic evaluation on held-out users; runs without it fall back "
                        "to charts/episodic_return)")
    p.add_argument("--metrics", default="return,retention,sessions,ctr", metavar="A,B",
                   help="metrics of the bar charts, each in at least one run (default: return,retention,"
                        "sessions,ctr, those present)")
    p.add_argument("--metric", default="return", metavar="NAME",
                   help="score of the robust aggregates: IQM, probability of improvement, paired differences, "
                        "performance profile (default: return, the long-term return)")
    p.add_argument("--reference", metavar="AGENT",
                   help="agent (or row label) the others are measured against (probability of improvement, "
                        "paired per-user differences; default: pctr_greedy, the CE start, else random)")
    p.add_argument("--bootstrap-reps", type=int, default=2000, metavar="N",
                   help="bootstrap resamples per interval (default: 2000; the performance profile's bands use at "
                        "most 500)")
    p.add_argument("--wandb", action="store_true",
                   help="also log the tables and plots as a W&B run (job type compare; offline unless logged in)")
    p.add_argument("--allow-mixed-envs", action="store_true", help="compare runs of different environments")
    p = add("explain", "explain a trained LLM policy: attributions, user lives, fingerprint, readable surrogate",
            "Explain an LLM slate policy on fresh simulated users, next to a second policy (by default a run "
            "folder's CE-pretrained policy, so that what RL changed is one picture): per recommendation, "
            "Integrated Gradients (Captum) of each slot's logit to the history items and the item's feature "
            "groups; per user life, the hidden satisfaction, fatigue, interests and sessions with each click's "
            "hidden quality and appeal; per policy, clickbait shown and clicked, hidden quality, diversity, "
            "coverage and repeats, overall and by day; a linear surrogate over named visible features with its "
            "fidelity and its own long-term return. Needs the extra explain (captum).")
    p.add_argument("run_folder", nargs="?", metavar="RUN_FOLDER",
                   help="a run folder: its checkpoints/final_policy, compared with its CE-pretrained policy")
    p.add_argument("--policy", metavar="PATH", help="a policy folder (config.json + model.safetensors) instead of a "
                                                    "run folder; needs --env")
    p.add_argument("--env", metavar="ID", help="with --policy: the registered environment, e.g. longrec/Video-v0")
    p.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="with --policy: an environment option, e.g. num_items=200 (repeatable)")
    p.add_argument("--compare", metavar="PATH", help="the policy shown side by side: a policy folder or a run folder "
                                                     "(its final policy); default: RUN_FOLDER's CE-pretrained policy")
    p.add_argument("--users", type=int, default=16, metavar="N",
                   help="fresh users, one whole life each, the same for every policy (default: 16)")
    p.add_argument("--seed", type=int, default=1000, metavar="S", help="seed of the fresh users (default: 1000)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_FOLDER/explain, or "
                                                "runs/explain__<policy>__<time> with --policy)")
    p.add_argument("--wandb", action="store_true",
                   help="also log the figures and tables as a W&B run (job type explain; offline unless logged in)")
    p = add("runs", "list run folders: status (a dead 'running' run shows as died), agent, env, seed, steps, result",
            "List the run folders at or below the given paths (default: runs/), oldest first, one line each: "
            "status (running, finished, failed, interrupted, or died: marked running but its process is gone), "
            "job, agent, env, seed, environment steps reached and the result. Stopped training runs continue with "
            "`longrec train --resume RUN`.")
    p.add_argument("paths", nargs="*", default=["runs"], metavar="DIR", help="run folders or folders holding them "
                                                                              "(default: runs)")
    p = add("bench", "list or run the benchmark scripts (benchmarks/*.py)",
            "Run a benchmark script of the repository's benchmarks/ folder; each prints a JSON line last.")
    p.add_argument("name", nargs="?", help="benchmark name (file stem); omit to list them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script (after --)")
    add("envs", "list the registered simulator environments",
        "List the registered longrec/* environment ids with one line each (the preset's spec).")
    return parser


# --------------------------------------------------------------------------- commands


def _overrides_from_args(args: argparse.Namespace) -> list[str]:
    """``KEY=VALUE`` overrides plus those the command's flags stand for."""
    overrides = list(args.overrides)
    if getattr(args, "runs_dir", None):
        overrides.append(f"logging.runs_dir={args.runs_dir}")
    if getattr(args, "no_wandb", False):
        overrides.append("logging.wandb=false")
    if args.quiet:
        overrides.append("logging.progress=false")
    if getattr(args, "checkpoint", None):
        overrides.append(f"eval.checkpoint={args.checkpoint}")
    return overrides


def _config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    cfg = load_config(args.config, _overrides_from_args(args))
    if not (args.command == "pretrain" and cfg.data.source == "movielens"):  # real-data pretraining needs no env
        check_registered_env(cfg.env.id)
    return cfg


def _print_keys() -> None:
    rows = describe_keys()
    width = max(len(r[0]) for r in rows)
    for key, tname, default, doc in rows:
        print(f"{key:<{width}}  {tname} = {default!r}\n{'':<{width}}  {' '.join(doc.split())}")


def _config_to_run(args: argparse.Namespace) -> ExperimentConfig | None:
    """The run's config, or None when ``--list-keys`` / ``--dry-run`` only printed something."""
    if args.list_keys:
        _print_keys()
        return None
    cfg = _config_from_args(args)
    if args.dry_run:
        print(cfg.to_yaml(), end="")
        return None
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    """train / pretrain / eval: one run folder; ``pretrain --nproc N`` or under torchrun: one run of N processes
    (``experiments.launch``)."""
    from llm_policy import distributed

    if distributed.launched():
        distributed.init()
    try:
        return _run_in_folder(args, getattr(args, "nproc", 1))
    finally:
        distributed.cleanup()


def _run_in_folder(args: argparse.Namespace, nproc: int) -> int:
    from experiments import jobs, launch
    from experiments.run import Run
    from llm_policy import distributed

    target = _resume_target(args)
    if nproc > 1:
        return _spawn(args, target, nproc)
    if target is not None:
        return resume_run(args, target)

    def checked() -> ExperimentConfig | None:
        cfg = _config_to_run(args)
        if cfg is not None:
            launch.check_nproc(args.command, cfg, distributed.world_size())
            jobs.check_config(args.command, cfg)
        return cfg

    cfg = distributed.from_main(checked)
    if cfg is None:
        return 0
    seeds = getattr(args, "seeds", None) or list(cfg.seeds)
    if seeds:
        return launch_seeds(args, cfg, seeds)
    if args.command == "train" and (args.workers != 1 or args.backend != "local"):
        raise ConfigError(f"--workers {args.workers} / --backend {args.backend} apply only to a multi-seed launch: "
                          "add --seeds (e.g. --seeds 0-4) or the config key seeds")
    if args.command == "train":
        _ray_options(args)  # --address / --cpus-per-trial / --gpus-per-trial without --backend ray
    with launch.open_run(lambda: Run.create(cfg, job_type=args.command), cfg) as run:
        args.run_path = run.path
        _say(args, f"run folder: {run.path}")
        jobs.JOBS[args.command](cfg, run)
    if distributed.is_main():
        _report(args, run.path)
    return 0


def _spawn(args: argparse.Namespace, target: str | None, nproc: int) -> int:
    """``longrec pretrain --nproc N``: every check here first (nothing made), then N processes (torchrun)."""
    from experiments import jobs, launch
    from experiments.resume import resumable_run

    if target is not None:
        _, cfg, summary = resumable_run(target, args.command)
        job = summary.get("job_type", "train")
    else:
        cfg, job = _config_to_run(args), args.command
        if cfg is None:
            return 0
    launch.check_nproc(job, cfg, nproc)
    jobs.check_config(job, cfg)
    return launch.spawn(args.argv, nproc)


def _resume_target(args: argparse.Namespace) -> str | None:
    """``--resume RUN`` or ``resume=RUN`` of ``longrec train`` / ``pretrain`` (the only overrides allowed beside it)."""
    if args.command not in ("train", "pretrain"):
        return None
    from experiments.config import parse_override

    given = [value for key, value in map(parse_override, args.overrides) if key == "resume"]
    target = args.resume or (given[-1] if given else None)
    if target is None:
        return None
    others = [o for o in args.overrides if parse_override(o)[0] != "resume"]
    others += [flag for flag, used in (("-c", args.config != "default"), ("--runs-dir", args.runs_dir),
                                       ("--no-wandb", args.no_wandb), ("--seeds", getattr(args, "seeds", None)),
                                       ("--dry-run", args.dry_run)) if used]
    if others:
        raise ConfigError(f"--resume continues the run with its own config.yaml; drop {', '.join(others)} "
                          "(to change settings, start a new run, e.g. with init_from=<its pretrained policy>)")
    return str(target)


def resume_run(args: argparse.Namespace, target: str) -> int:
    """``longrec train|pretrain --resume RUN``: checks first (one line, nothing touched), then the rest of the run
    (under torchrun: rank 0 checks and reopens the folder, every rank trains)."""
    from experiments import jobs, launch
    from experiments.resume import reopen_run, resumable_run
    from llm_policy import distributed

    def checked() -> tuple[Path, ExperimentConfig, dict]:
        folder, cfg, summary = resumable_run(target, args.command)
        if args.quiet:
            cfg = cfg.override("logging.progress=false")
        job = summary.get("job_type", "train")
        launch.check_nproc(job, cfg, distributed.world_size())
        jobs.check_config(job, cfg)
        return folder, cfg, summary

    folder, cfg, summary = distributed.from_main(checked)
    job = summary.get("job_type", "train")
    with launch.open_run(lambda: reopen_run(folder, cfg, summary), cfg) as run:
        args.run_path = run.path
        where = (f"epoch {run.resume['from_epoch']}" if job == "pretrain" else f"step {run.resume['from_step']}")
        _say(args, f"resuming {run.path} ({run.resume['from_status']}) from {where}")
        if job == "pretrain":
            jobs._pretrain(cfg, run)
        else:
            jobs._train(cfg, run)
    if distributed.is_main():
        _report(args, run.path)
    return 0


def launch_seeds(args: argparse.Namespace, cfg: ExperimentConfig, seeds: Sequence[int]) -> int:
    """``train --seeds``: one run per seed on the local pool or W&B agents, then the cross-seed table."""
    from experiments.seeds import run_seeds
    from experiments.sweep import SweepError

    if args.workers < 1:
        raise SweepError(f"--workers must be >= 1; got {args.workers}")
    _, code = run_seeds(cfg, args.config, _overrides_from_args(args), seeds, workers=args.workers,
                        backend=args.backend, ray_options=_ray_options(args), progress=not args.quiet,
                        project=cfg.logging.project, entity=cfg.logging.entity)
    return code


def cmd_quickstart(args: argparse.Namespace) -> int:
    """The README's main job (``experiments.jobs.run_quickstart``)."""
    cfg = _config_to_run(args)
    if cfg is None:
        return 0
    from experiments import jobs

    path = jobs.run_quickstart(cfg)
    _report(args, path)
    return 0


def _report(args: argparse.Namespace, path: Path) -> None:
    """The comparison table of a finished run, its plot and where everything is."""
    from experiments.compare import agent_rows_table
    from experiments.run import read_json

    summary = read_json(path / "summary.json")
    rows = dict(summary.get("agents") or {})
    print()
    if rows:  # the result, also in --quiet mode
        print(agent_rows_table(rows))
    else:
        for key, value in (summary.get("metrics") or {}).items():
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    plots = sorted((path / "plots").glob("*.png"))
    for plot in plots:
        print(f"plot: {plot}")
    print(f"run folder: {path}")
    wandb_info = summary.get("wandb") or {}
    if wandb_info.get("mode") == "offline" and not args.quiet:
        print(f"W&B (offline): upload later with `wandb sync {path}/wandb/offline-run-*`")
    elif wandb_info.get("url"):
        print(f"W&B: {wandb_info['url']}")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run, join or resume a sweep; a local or Ray sweep returns 1 when any trial failed (each named on stderr)."""
    from experiments import sweep as sweeps

    if args.workers < 1 and args.backend == "local":
        raise sweeps.SweepError(f"--workers must be >= 1; got {args.workers}")
    sweeps.check_count(args.count)
    ray_options = _ray_options(args)
    if args.sweep_id and args.backend != "wandb":
        raise sweeps.SweepError(f"--sweep-id joins a W&B sweep: it needs --backend wandb; got --backend {args.backend}")
    if args.resume:
        overrides = list(args.overrides)
        if args.file and "=" in args.file:  # `--resume DIR key=value`: argparse took the override for FILE
            overrides, args.file = [args.file, *overrides], None
        clashes = {f"the sweep FILE {args.file!r}": args.file, f"--out {args.out}": args.out,
                   f"--runs-dir {args.runs_dir}": args.runs_dir, f"--sweep-id {args.sweep_id}": args.sweep_id,
                   "--backend wandb": args.backend == "wandb"}
        clash = next((name for name, value in clashes.items() if value), None)
        if clash:
            raise sweeps.SweepError(f"--resume {args.resume} runs the sweep stored in that folder (local or ray "
                                    f"backend); drop {clash}")
        if ray_options is not None:
            from experiments.sweep_ray import resume_ray_sweep

            folder, results = resume_ray_sweep(args.resume, ray_options, count=args.count, seed=args.seed,
                                               overrides=overrides, progress=not args.quiet)
        else:
            folder, results = sweeps.resume_local_sweep(args.resume, workers=args.workers, count=args.count,
                                                        seed=args.seed, overrides=overrides, progress=not args.quiet)
    elif args.backend == "wandb":
        if args.sweep_id:
            if args.overrides:
                raise sweeps.SweepError("KEY=VALUE overrides cannot change a registered sweep (--sweep-id); "
                                        "put them in the sweep file's command and register it again")
            sweep_id = args.sweep_id
        else:
            if not args.file:
                raise sweeps.SweepError("give a sweep FILE to register, or --sweep-id to join an existing sweep")
            spec = sweeps.with_command_overrides(sweeps.load_sweep(args.file), args.overrides)
            sweep_id = sweeps.wandb_sweep_id(spec, args.project, args.entity)
        print(f"W&B sweep: {sweep_id}")
        print(f"more agents (any machine with this repo installed and `wandb login`): "
              f"longrec sweep --backend wandb --sweep-id {sweep_id} --workers N   (or: wandb agent {sweep_id})")
        if args.workers < 1:
            return 0
        return sweeps.run_wandb_agents(sweep_id, args.workers, args.count)
    else:
        if not args.file:
            raise sweeps.SweepError(f"the {args.backend} backend needs a sweep FILE (or --resume SWEEP_FOLDER)")
        spec = sweeps.load_sweep(args.file)
        settings = {"count": args.count, "out_dir": args.out, "overrides": args.overrides, "seed": args.seed or 0,
                    "runs_dir": args.runs_dir or "runs", "progress": not args.quiet}
        if ray_options is not None:
            from experiments.sweep_ray import run_ray_sweep

            folder, results = run_ray_sweep(spec, ray_options, **settings)
        else:
            folder, results = sweeps.run_local_sweep(spec, workers=args.workers, **settings)
    print((folder / "results.md").read_text())
    print(f"sweep folder: {folder}  (results.csv, one run folder per trial; "
          f"`longrec compare {folder}` for tables and plots)")
    failed = [r for r in results if r.status != "finished"]
    for r in failed:
        print(f"trial {r.index} failed: {(r.error or 'no error recorded').splitlines()[0]} ({r.run_dir})",
              file=sys.stderr)
    if failed:
        print(f"{len(failed)}/{len(results)} trials failed; rerun them with `longrec sweep --resume {folder}`",
              file=sys.stderr)
    return 1 if failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from experiments.compare import compare

    out = args.out
    if out is None:
        first = Path(args.paths[0])
        if len(args.paths) == 1 and not (first / "summary.json").exists():
            out = first / "compare"
        else:
            out = Path("runs") / f"compare__{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    by = args.by or sweep_grouping(args.paths) or "agent"
    result = compare(args.paths, out, by=by, curve_metric=args.curve_metric, bar_metrics=metrics,
                     allow_mixed_envs=args.allow_mixed_envs, metric=args.metric, reference=args.reference,
                     wandb=args.wandb, reps=args.bootstrap_reps)
    if not args.quiet:
        print(result.markdown)
    for path in result.files:
        print(f"wrote {path}")
    if result.wandb_url:
        print(f"W&B: {result.wandb_url}")
    return 0


def sweep_grouping(paths: Sequence[str]) -> str | None:
    """For one sweep folder: its swept keys except ``seed`` (so seeds aggregate per configuration)."""
    if len(paths) != 1 or not (Path(paths[0]) / "sweep.yaml").exists():
        return None
    from experiments.sweep import load_sweep

    spec = load_sweep(Path(paths[0]) / "sweep.yaml", validate_values=False)
    keys = [k for k, p in spec.parameters.items() if p["distribution"] != "constant" and k != "seed"]
    return ",".join(keys) or None


def cmd_explain(args: argparse.Namespace) -> int:
    """``longrec explain``: report.html with its figures; prints the elapsed time and the report's path."""
    import time

    from experiments.config import parse_override

    start = time.perf_counter()
    env_kwargs = {}
    for text in args.env_kwarg:
        if "=" not in text:
            raise ConfigError(f"--env-kwarg {text!r} must be KEY=VALUE, e.g. num_items=200")
        key, value = parse_override(text)
        env_kwargs[key] = value
    import importlib.util

    if importlib.util.find_spec("captum") is None:
        raise ConfigError("longrec explain needs captum (the extra 'explain'): pip install -e .[explain]")
    from experiments.explain import config_from_args, explain

    config = config_from_args(run_folder=args.run_folder, policy=args.policy, env=args.env, env_kwargs=env_kwargs,
                              compare=args.compare, users=args.users, seed=args.seed, out=args.out, wandb=args.wandb,
                              progress=not args.quiet)
    result = explain(config)
    for path in result.files:
        if not args.quiet:
            print(f"wrote {path}")
    if result.wandb_url:
        print(f"W&B: {result.wandb_url}")
    print(f"explained {config.label}" + (f" vs {config.compare_label}" if config.compare else "")
          + f" in {time.perf_counter() - start:.1f} s: {result.report}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from experiments.listing import list_runs, runs_table

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise ConfigError(f"no such folder: {', '.join(map(repr, missing))}")
    rows = list_runs(args.paths)
    print(runs_table(rows) if rows else f"no run folders under {', '.join(args.paths)}")
    return 0


def list_benchmarks() -> dict[str, str]:
    """``{name: first docstring line}`` of ``benchmarks/*.py`` (helpers starting with ``_`` left out)."""
    if not BENCHMARKS_DIR.is_dir():
        return {}
    out = {}
    for path in sorted(BENCHMARKS_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        except SyntaxError:
            doc = ""
        out[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    benches = list_benchmarks()
    if not benches:
        print(f"no benchmark scripts found in {BENCHMARKS_DIR} (they live in the source checkout)", file=sys.stderr)
        return 1
    if not args.name:
        width = max(map(len, benches))
        for name, doc in benches.items():
            print(f"{name:<{width}}  {doc}")
        return 0
    if args.name not in benches:
        import difflib

        close = difflib.get_close_matches(args.name, list(benches), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown benchmark {args.name!r}{hint}; available: {', '.join(benches)}")
    extra = list(args.args[1:] if args.args[:1] == ["--"] else args.args)
    return subprocess.call([sys.executable, str(BENCHMARKS_DIR / f"{args.name}.py"), *extra])


def env_descriptions() -> list[tuple[str, str]]:
    """``(id, first line of the preset's spec docstring)`` for every registered ``longrec/*`` id."""
    import envs

    return [(env_id, envs.describe(env_id)) for env_id in envs.registered_ids()]


def cmd_envs(args: argparse.Namespace) -> int:
    rows = env_descriptions()
    width = max((len(r[0]) for r in rows), default=0)
    for env_id, line in rows:
        print(f"{env_id:<{width}}  {line}")
    return 0


COMMANDS = {"train": cmd_run, "pretrain": cmd_run, "eval": cmd_run, "quickstart": cmd_quickstart,
            "sweep": cmd_sweep, "compare": cmd_compare, "explain": cmd_explain, "runs": cmd_runs, "bench": cmd_bench,
            "envs": cmd_envs}


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet and _main_process():
        print(text)


def _main_process() -> bool:
    """False in the ranks > 0 of a torchrun launch (rank 0 speaks for the run)."""
    return os.environ.get("RANK", "0") == "0"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv  # what `pretrain --nproc N` runs again in each process
    # KEY=VALUE overrides may come after options (`longrec sweep tiny --workers 2 seed=1`)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if not hasattr(args, "quiet"):
        args.quiet = False
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when it is imported (all our bars are created later)
    from experiments.compare import CompareError
    from experiments.sweep import SweepError

    if args.command in ("train", "pretrain", "eval", "quickstart"):
        # `kill` / a scheduler's SIGTERM ends the run as "interrupted" (summary written), like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if hasattr(args, "nproc") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from experiments.launch import check_command

            check_command(args.command, getattr(args, "nproc", 1))  # --nproc and torchrun: pretrain only
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        where = getattr(args, "run_path", None)
        command = "train" if args.command == "quickstart" else args.command
        again = (f"; continue it with `longrec {command} --resume {where}`" if where is not None
                 and args.command in ("train", "quickstart", "pretrain") else "")
        if _main_process():
            print(f"longrec {args.command}: interrupted (the run folder is marked 'interrupted'; "
                  f"metrics so far are in its metrics.jsonl){again}", file=sys.stderr)
        return 130
    except (ConfigError, SweepError, CompareError) as exc:
        if _main_process():
            print(f"longrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
