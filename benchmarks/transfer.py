"""Transfer benchmark: what a text policy carries to new items, a new catalog and other domains.

Per training seed (each step saved as it ends; rerun with the same ``--out`` to resume, ``--merge-only``
to aggregate):

1. **Source.** On ``--source`` (catalog 0), logs of the production logger -> CE pretraining -> PPO for
   ``--source-steps`` (``ce_ppo``, through ``benchmarks/long_term.py``'s code path, i.e. ``longrec train``),
   and the id-based ``ppo_mlp`` and ``slateq`` (privileged: it reads the true choice model) for the same
   budget; each evaluated on fresh users of the source catalog (the in-catalog return).
2. **Targets** (``--targets``; ``catalog_seed=1`` of the source preset is a whole new catalog: every item
   new): the source RL policy and its CE start serve the target's items through
   ``LLMSlatePolicy.set_catalog`` (the target catalog's texts embedded by the source's text encoder), zero
   shot; ``ppo_mlp`` and ``slateq`` only on a catalog of the same size, their ids mapped as they are (the
   "no transfer" baselines); references ``random``, ``popularity`` and the privileged ``watch_greedy``; all on the same
   fresh users of the target (``seed + 10000``).
3. **Fine-tuning.** ``--finetune-steps`` of PPO on the target from the transferred RL policy
   (``transfer_ft``) against the same PPO budget from the target's own CE start on the target's logger
   logs (``target_ce_ppo``), with held-out curves every ``--finetune-steps // 5`` steps.

With ``--item-statistics on`` every policy also reads the items' logged engagement counters
(``agents.item_statistics``): the source's from the source's logs, and on a target those of the target's own
logger logs (the logs its CE start is trained on; visible data, no RL on the target), so "zero shot" there means
no training on the target, not no data from it; ``completion_greedy`` (ranking by those counters alone) joins the
references. ``--source-from DIR`` reuses the CE start and ``ce_ppo`` run of each seed of a
``benchmarks/long_term.py`` folder (the same settings and logs) instead of training the source again.

``fraction_of_in_domain``: a zero-shot return divided by the in-domain return of that domain: for a new
catalog of the source preset, the same policy's in-catalog return on the source; for another preset,
``target_ce_ppo`` (an RL policy trained on the target itself with the fine-tuning budget). The last line is
JSON::

    {"zero_shot": {target: {agent: {"return", "ci95", "fraction_of_in_domain"}}}, "fine_tuned": {...},
     "zero_shot_paired": {target: {"transfer_rl_minus_<agent>": {"diff", "ci95", "seeds"}}},
     "in_domain": {...}, "seeds": [...]}

    python benchmarks/transfer.py --seeds 0-2                                  # text only
    python benchmarks/transfer.py --seeds 0-2 --item-statistics on \\
        --source-from runs/long_term/video_logger_stats_1M_clip02            # the README's figures
    python benchmarks/transfer.py --seeds 0 --source-steps 1024 --finetune-steps 512 --eval-users 8 --num-envs 16 \\
        --pretrain-users 20 --targets longrec/Video-v0:catalog_seed=1 longrec/News-v0 --text-encoder tiny \\
        --out /tmp/transfer_smoke                                             # a smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/long_term.py: the shared pipeline

import long_term  # noqa: E402

from experiments.seeds import parse_seeds  # noqa: E402

DEFAULT_TARGETS = ("longrec/Video-v0:catalog_seed=1", "longrec/News-v0", "longrec/Music-v0", "longrec/Ecommerce-v0",
                   "longrec/Travel-v0")
REFERENCES = ("random", "popularity", "completion_greedy", "watch_greedy")
"""(``completion_greedy`` with ``--item-statistics on`` only: it ranks by the target's logged counters)"""
ZERO_SHOT = ("transfer_rl", "transfer_ce", "ppo_mlp_ids", "slateq_ids")
ID_AGENTS = {"ppo_mlp": "final.zip", "slateq": "slateq.pt"}
"""the id-based source agents and their checkpoint file: served on a same-size catalog as ``<agent>_ids``"""
FINE_TUNED = ("transfer_ft", "target_ce_ppo")
PAIRED_ZERO_SHOT = ("random", "completion_greedy", "slateq_ids")
"""the zero-shot ``transfer_rl`` is paired per user with each of these on the same target users"""


def parse_target(text: str) -> tuple[str, dict[str, Any]]:
    """``longrec/Video-v0:catalog_seed=1`` -> ``("longrec/Video-v0", {"catalog_seed": 1})``."""
    from experiments.config import ConfigError, parse_override

    env_id, _, options = text.partition(":")
    try:  # each option is a config override's KEY=VALUE, its value read as YAML
        return env_id, dict(parse_override(item) for item in filter(None, options.split(",")))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"target {text!r}: {exc}; e.g. longrec/Video-v0:catalog_seed=1") from None


def target_name(text: str) -> str:
    env_id, kwargs = parse_target(text)
    return env_id.split("/")[-1] + "".join(f"_{k}{v}" for k, v in kwargs.items())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="longrec/Video-v0")
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), help="ENV_ID[:KEY=VALUE,...]")
    parser.add_argument("--seeds", type=parse_seeds, default=[0])
    parser.add_argument("--source-steps", type=int, default=300_000, help="training steps on the source (ce_ppo, ppo_mlp, slateq)")
    parser.add_argument("--finetune-steps", type=int, default=50_000, help="PPO steps on each target")
    parser.add_argument("--eval-users", type=int, default=500, help="fresh users per agent, target and seed")
    parser.add_argument("--text-encoder", default="minilm", help="minilm, or tiny for smoke runs")
    parser.add_argument("--pretrain-users", type=int, default=400, help="logged users of each CE pretraining")
    parser.add_argument("--num-envs", type=int, default=64, help="parallel users during PPO")
    parser.add_argument("--item-statistics", default="off", choices=("on", "off"),
                        help="'on': the policies also read the items' logged counters (on a target: from its own logs)")
    parser.add_argument("--source-from", default=None, metavar="DIR",
                        help="reuse each seed's CE start and ce_ppo run of this benchmarks/long_term.py folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/transfer")
    parser.add_argument("--merge-only", action="store_true")
    return parser.parse_args(argv)


def pipeline_args(args: argparse.Namespace, env_id: str, steps: int) -> argparse.Namespace:
    """``benchmarks/long_term.py``'s settings for one environment and PPO budget (its defaults otherwise)."""
    return long_term.parse_args(["--env", env_id, "--budget-steps", str(steps), "--eval-users", str(args.eval_users),
                                 "--threads", str(args.threads), "--text-encoder", args.text_encoder,
                                 "--eval-every", str(max(steps // 5, 1)), "--curve-users", "100",
                                 "--pretrain-users", str(args.pretrain_users), "--num-envs", str(args.num_envs),
                                 "--item-statistics", args.item_statistics])


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.merge_only:
        for seed in args.seeds:
            run_seed(args, seed, out / f"seed_{seed}")
    return merge(args, out)


# --------------------------------------------------------------------------- one seed


def record_once(path: Path, make: Any) -> dict[str, Any]:
    """``path``'s record, or ``make()``'s, written atomically as soon as it is done (resumable)."""
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    record = {**make(), "seconds": time.perf_counter() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    long_term._write_json(path, record)
    return record


def train(args: argparse.Namespace, env_id: str, kwargs: dict[str, Any], agent: str, seed: int, steps: int,
          runs: Path, init_from: Path | None) -> dict[str, Any]:
    """``longrec train agent=<agent>`` on ``env_id`` (with ``kwargs``): its row and run folder."""
    settings = pipeline_args(args, env_id, steps)
    overrides = [*long_term.common_overrides(settings, seed, runs), *long_term.agent_overrides(settings, agent, seed, init_from),
                 *long_term.env_overrides(kwargs)]
    run_dir, result = long_term.run_job("train", overrides)
    return {"row": result["agents"][agent], "run": str(run_dir), "returns": per_user(run_dir, agent)}


def per_user(run_dir: Path | str, agent: str) -> list[float]:
    from experiments.jobs import load_per_user

    return load_per_user(run_dir)[f"{agent}/return"].tolist()


def run_seed(args: argparse.Namespace, seed: int, seed_dir: Path) -> None:
    """The source's runs, then every target, each result saved as it ends."""
    source = seed_dir / "source"
    if args.source_from is not None:
        reuse_source(Path(args.source_from) / f"seed_{seed}", source, args.item_statistics)
    ce_dir = long_term.pretrain_for_seed(pipeline_args(args, args.source, args.source_steps), seed, source)
    rl = record_once(source / "ce_ppo.json", lambda: train(args, args.source, {}, "ce_ppo", seed, args.source_steps,
                                                           source / "runs", ce_dir))
    print(f"seed {seed}: source {args.source} ce_ppo {rl['row']['return']:.1f}", flush=True)
    sources = {"transfer_rl": Path(rl["run"]) / "checkpoints" / "final_policy", "transfer_ce": ce_dir}
    for agent, checkpoint in ID_AGENTS.items():
        row = record_once(source / f"{agent}.json", lambda a=agent: train(args, args.source, {}, a, seed,
                                                                          args.source_steps, source / "runs", None))
        sources[agent] = Path(row["run"]) / "checkpoints" / checkpoint
    encoder = text_encoder_of(Path(json.loads((source / "pretrain.json").read_text())["run"]))
    for text in args.targets:
        run_target(args, seed, seed_dir / target_name(text), *parse_target(text), sources, encoder)
        print(f"seed {seed}: {target_name(text)} done", flush=True)


def reuse_source(long_term_seed: Path, source: Path, item_statistics: str) -> None:
    """Take ``benchmarks/long_term.py``'s CE start and ``ce_ppo`` run of one seed (``--source-from``) as the source's."""
    found = {name: long_term_seed / f"{name}.json" for name in ("pretrain", "ce_ppo")}
    missing = [str(path) for path in found.values() if not path.exists()]
    if missing:
        raise SystemExit(f"--source-from: {', '.join(missing)} not found (run benchmarks/long_term.py with "
                         "--agents ce_ppo into that folder first)")
    if (source / "ce_ppo.json").exists():
        return
    from llm_policy.model import CONFIG_FILE

    pretrained = json.loads(found["pretrain"].read_text())
    config = json.loads((Path(pretrained["policy_dir"]) / CONFIG_FILE).read_text())["model_config"]
    if bool(config.get("item_statistics")) != (item_statistics == "on"):
        raise SystemExit(f"--source-from {long_term_seed.parent}: its policy was trained with item_statistics="
                         f"{bool(config.get('item_statistics'))}, this run has --item-statistics {item_statistics}: "
                         "pass the matching --item-statistics")
    source.mkdir(parents=True, exist_ok=True)
    long_term._write_json(source / "pretrain.json", pretrained)
    rl = json.loads(found["ce_ppo"].read_text())
    long_term._write_json(source / "ce_ppo.json", {"row": rl["row"], "run": rl["run"], "returns": per_user(rl["run"], "ce_ppo"),
                                                   "seconds": rl.get("seconds"), "reused_from": str(long_term_seed)})


def run_target(args: argparse.Namespace, seed: int, folder: Path, env_id: str, kwargs: dict[str, Any],
               sources: dict[str, Path], encoder: str | None) -> None:
    """Zero-shot agents and references on one target, then the two fine-tuning runs."""
    target_ce = long_term.pretrain_for_seed(pipeline_args(args, env_id, args.finetune_steps), seed, folder, kwargs)
    logs = folder / "logs.npz" if args.item_statistics == "on" else None  # the target's own logs: its counters
    for name in ("transfer_rl", "transfer_ce"):
        record_once(folder / f"{name}.json",
                    lambda n=name: zero_shot(args, env_id, kwargs, sources[n], encoder, seed, logs))
    if catalog_size(env_id, kwargs) == catalog_size(args.source, {}):  # ids of the same range: the no-transfer baseline
        for agent in ID_AGENTS:
            record_once(folder / f"{agent}_ids.json", lambda a=agent: evaluate(args, env_id, kwargs, seed, a,
                                                                               path=sources[a], map_ids=True))
    for name in REFERENCES:
        counters = name == "completion_greedy"  # ranks by the target's logged counters: only with --item-statistics on
        if not counters or logs is not None:
            record_once(folder / f"{name}.json", lambda n=name, c=counters: evaluate(
                args, env_id, kwargs, seed, n, **({"path": target_ce} if c else {})))
    moved = folder / "transferred_policy"
    if not (moved / "config.json").exists():
        transferred(sources["transfer_rl"], env_id, kwargs, encoder, logs).save_pretrained(moved)
    record_once(folder / "transfer_ft.json", lambda: train(args, env_id, kwargs, "ce_ppo", seed, args.finetune_steps,
                                                            folder / "runs", moved))
    record_once(folder / "target_ce_ppo.json", lambda: train(args, env_id, kwargs, "ce_ppo", seed, args.finetune_steps,
                                                              folder / "runs", target_ce))


def text_encoder_of(pretrain_run: Path) -> str | None:
    """The source's item-text encoder folder (None = the bundled MiniLM), to embed every target catalog."""
    tiny = pretrain_run / "tiny_text_encoder"
    return str(tiny) if (tiny / "config.json").exists() else None


def catalog_size(env_id: str, kwargs: dict[str, Any]) -> int:
    import envs

    return envs.make_core(env_id, **kwargs).catalog.num_items


def transferred(policy_dir: Path, env_id: str, kwargs: dict[str, Any], encoder: str | None,
                logs: Path | None = None) -> Any:
    """The policy of ``policy_dir`` serving ``env_id``'s catalog (same weights, the target's item table; with
    ``logs``, a policy with item statistics reads the counters of those target logs, else zeros: nothing logged)."""
    import gymnasium as gym

    import envs
    from agents.item_statistics import with_item_statistics
    from agents.logs import load_logs
    from llm_policy import ItemTextEncoder, LLMSlatePolicy

    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    catalog = envs.get_core(env).catalog
    policy = LLMSlatePolicy.from_pretrained(policy_dir)
    embeddings = ItemTextEncoder(encoder, show_progress=False).encode_catalog(catalog)
    if logs is not None and policy.model.config.item_statistics:
        embeddings = with_item_statistics(embeddings, load_logs(logs))
    return policy.set_catalog(embeddings, catalog.fingerprint(), env.observation_space, env.action_space)


def zero_shot(args: argparse.Namespace, env_id: str, kwargs: dict[str, Any], policy_dir: Path, encoder: str | None,
              seed: int, logs: Path | None = None) -> dict[str, Any]:
    policy = transferred(policy_dir, env_id, kwargs, encoder, logs)
    return evaluate(args, env_id, kwargs, seed, "pctr_greedy", policy=policy)


def evaluate(args: argparse.Namespace, env_id: str, kwargs: dict[str, Any], seed: int, name: str,
             **agent_kwargs: Any) -> dict[str, Any]:
    """``name`` (with ``agent_kwargs`` for ``agents.baselines.make_baseline``) on the target's fresh users."""
    from agents.baselines import make_baseline
    from agents.evaluate import evaluate_agent

    spec = (lambda core: make_baseline(name, core, seed=seed, **agent_kwargs)) if agent_kwargs else name
    result = evaluate_agent(spec, env_id, num_users=args.eval_users, seeds=[seed + 10_000], env_kwargs=kwargs,
                            progress=False)
    return {"row": {k: v for k, v in result.row.items() if isinstance(v, (int, float))},
            "returns": np.concatenate([r.values["return"] for r in result.records]).tolist()}


# --------------------------------------------------------------------------- merge


def merge(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Mean ± 95% CI across seeds per target and agent, fractions of the in-domain return, paired fine-tuning."""
    from agents.stats import t_ci95

    seeds = sorted(int(p.name.split("_")[1]) for p in out.glob("seed_*"))
    records: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for seed in seeds:
        for path in (out / f"seed_{seed}").glob("*/*.json"):
            if path.stem != "pretrain":
                records.setdefault(path.parent.name, {}).setdefault(path.stem, {})[seed] = json.loads(path.read_text())

    def stat(by_seed: dict[int, dict[str, Any]]) -> dict[str, float]:
        values = [r["row"]["return"] for r in by_seed.values()]
        mean, half = t_ci95(values)
        return {"return": mean, "ci95": by_seed[next(iter(by_seed))]["row"]["return_ci95"] if len(values) == 1 else half,
                "seeds": sorted(by_seed)}

    source = records.get("source", {})
    in_domain = {name: stat(by_seed) for name, by_seed in source.items() if name in ("ce_ppo", *ID_AGENTS)}
    zero, zero_paired, tuned = {}, {}, {}
    for text in args.targets:
        name = target_name(text)
        found = records.get(name, {})
        same_preset = parse_target(text)[0] == args.source
        reference = in_domain.get("ce_ppo") if same_preset else (stat(found["target_ce_ppo"]) if "target_ce_ppo" in found else None)
        zero[name] = {}
        for agent in (*ZERO_SHOT, *REFERENCES):
            if agent in found:
                row = stat(found[agent])
                base = in_domain.get(agent.removesuffix("_ids")) if agent.endswith("_ids") and same_preset else reference
                row["fraction_of_in_domain"] = row["return"] / base["return"] if base else None
                zero[name][agent] = row
        tuned[name] = {agent: stat(found[agent]) for agent in FINE_TUNED if agent in found}
        zero_paired[name] = {}
        for control in PAIRED_ZERO_SHOT:
            paired = paired_records(found, "transfer_rl", control)
            if paired is not None:
                zero_paired[name][f"transfer_rl_minus_{control}"] = paired
        paired = paired_records(found, "transfer_ft", "target_ce_ppo")
        if paired is not None:
            tuned[name]["transfer_ft_minus_target_ce_ppo"] = paired
    print_tables(zero, zero_paired, tuned, in_domain)
    for text in args.targets:
        plot_finetune_curves(records.get(target_name(text), {}), out / f"finetune_{target_name(text)}.png")
    summary = {"zero_shot": zero, "zero_shot_paired": zero_paired, "fine_tuned": tuned, "in_domain": in_domain, "seeds": seeds}
    print(json.dumps(summary))
    return summary


def paired_records(found: dict[str, dict[int, dict[str, Any]]], treatment: str, control: str) -> dict[str, Any] | None:
    """``treatment`` minus ``control``, paired per user within each seed both ran (the same users), then across seeds."""
    from agents.stats import paired_difference

    common = sorted(set(found.get(treatment, {})) & set(found.get(control, {})))
    if not common:
        return None
    diff = paired_difference([np.array(found[treatment][s]["returns"]) for s in common],
                             [np.array(found[control][s]["returns"]) for s in common])
    return {"diff": diff.diff, "ci95": diff.ci95, "seeds": common}


def plot_finetune_curves(found: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Held-out return during fine-tuning on one target: the transferred policy vs the target's own CE start
    (mean and 95% band across seeds; ``experiments.compare``'s curves)."""
    from experiments.compare import CompareError, curve_data, load_records, plot_curve_data

    curves = {}
    for agent in FINE_TUNED:
        try:
            records, _ = load_records([record["run"] for record in found.get(agent, {}).values()])
        except CompareError:
            continue
        curves[agent] = [curve for runs in curve_data(records, "heldout/return").values() for curve in runs]
    curves = {agent: runs for agent, runs in curves.items() if runs}
    if curves and plot_curve_data(curves, "heldout/return", path) is not None:
        print(f"fine-tuning curves: {path}")


def print_tables(zero: dict[str, Any], zero_paired: dict[str, Any], tuned: dict[str, Any], in_domain: dict[str, Any]
                 ) -> None:
    for name, row in in_domain.items():
        print(f"source {name}: {row['return']:.1f} ± {row['ci95']:.1f} (in-catalog, seeds {row['seeds']})")
    print(f"\n{'target':<26}{'agent':<16}{'return':>18}{'fraction':>10}")
    for target, agents in zero.items():
        for agent, row in agents.items():
            fraction = "" if row["fraction_of_in_domain"] is None else f"{row['fraction_of_in_domain']:.2f}"
            print(f"{target:<26}{agent:<16}{row['return']:>10.1f} ± {row['ci95']:<6.1f}{fraction:>10}")
        for pair, row in zero_paired.get(target, {}).items():
            print(f"{target:<26}{pair.replace('_minus_', ' - ')} (paired): {row['diff']:+.1f} ± {row['ci95']:.1f}")
        for agent, row in tuned.get(target, {}).items():
            if "return" in row:
                print(f"{target:<26}{agent:<16}{row['return']:>10.1f} ± {row['ci95']:<6.1f}")
            else:
                print(f"{target:<26}transfer_ft - target_ce_ppo (paired): {row['diff']:+.1f} ± {row['ci95']:.1f}")


if __name__ == "__main__":
    main()
