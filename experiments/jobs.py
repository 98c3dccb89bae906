"""The one place where ``experiments`` calls the packages that do the work.

The CLI, the sweep runner and W&B agents all go through four jobs::

    run_train(cfg: ExperimentConfig, run: Run) -> dict[str, Any]
    run_pretrain(cfg: ExperimentConfig, run: Run) -> dict[str, Any]
    run_eval(cfg: ExperimentConfig, run: Run) -> dict[str, Any]
    run_quickstart(cfg: ExperimentConfig) -> Path

Each job takes the validated config and an open :class:`experiments.run.Run`
(folder + W&B), logs metrics through ``run.log(metrics, step)``, records its
final numbers in ``summary.json`` via ``run.update_summary(metrics=...)`` and
returns them. Each first calls :func:`check_config`: a key the job would not read
(for its agent and data source) must keep its default, so that no setting is
silently ignored; the CLI calls it too, before any run folder is made.

The config sections are the libraries' config classes, passed as they are:
``llm_policy.pretrain.pretrain(logs, embeddings, config=cfg.pretrain, model_config=cfg.policy, ...)``,
``agents.ppo.train_ppo(cfg.ppo, cfg.total_timesteps, kl=cfg.kl, ...)``,
``agents.slateq.train_slateq(env_id, cfg.total_timesteps, cfg.slateq, ...)``; run-level
settings (seed, device, env, num_envs, folders, progress) are their arguments.

Metric names follow CleanRL: training curves under ``charts/`` and ``losses/``,
final evaluation of the run's own agent under ``eval/`` (``eval/return``,
``eval/return_ci95``, ``eval/ctr``, ``eval/retention`` (the evaluator's return rate), ...); other agents
evaluated in the same run go to ``summary["agents"]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.baselines import BEHAVIOURS, make_baseline
from agents.evaluate import evaluate_agent
from agents.item_statistics import with_item_statistics
from agents.logs import generate_logs, load_logs
from agents.movielens_pretrain import pretrain_movielens
from agents.ppo import train_ppo
from agents.registry import FIXED_AGENTS, PRETRAINED_AGENTS, agent_info
from agents.slateq import train_slateq
from envs.atomic_file import atomic_open
from envs.registration import make_core
from experiments.config import ConfigError, ExperimentConfig
from experiments.preflight import check_files, resolve_checkpoint
from llm_policy import distributed
from llm_policy.config import PretrainConfig
from llm_policy.device import resolve_device
from llm_policy.pretrain import pretrain
from llm_policy.privacy import require_opacus
from llm_policy.text_encoder import ItemTextEncoder, resolve_text_encoder

# --------------------------------------------------------------------------- what each job reads


def check_config(job: str, cfg: ExperimentConfig) -> None:
    """Raise ConfigError if ``job`` cannot run ``cfg`` as given, before any work and any run folder.

    A key the job does not read (for ``cfg.agent`` and ``data.source``) must keep its default:
    ``longrec train agent=random ppo.learning_rate=1e-3`` is an error naming the key and why.
    """
    try:
        resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(f"config key 'device': {exc}") from None
    if (job in ("pretrain", "train", "quickstart") and _pretrains(job, cfg) and cfg.data.source == "simulator"
            and not cfg.data.path and cfg.data.behaviour not in BEHAVIOURS):
        raise ConfigError(f"config key 'data.behaviour' must be one of {', '.join(map(repr, BEHAVIOURS))}; "
                          f"got {cfg.data.behaviour!r}")
    if job in ("pretrain", "train", "quickstart") and _pretrains(job, cfg) and cfg.data.source == "movielens":
        if cfg.data.path and not Path(cfg.data.path).is_dir():
            raise ConfigError(f"config key 'data.path' must name a MovieLens folder (ratings.csv, movies.csv) or be "
                              f"null (the project's copy of ml-latest-small, or $LONGREC_MOVIELENS); got {cfg.data.path!r}")
    if job in ("pretrain", "train", "quickstart") and _pretrains(job, cfg) and cfg.pretrain.dp.enabled:
        _check_private_pretraining(cfg)
    if cfg.resume is not None and job in ("train", "quickstart"):  # `longrec train` turns it into a resume first
        raise ConfigError(f"config key 'resume' continues a stopped run: `longrec train --resume {cfg.resume}` "
                          f"(not `longrec {job}` with resume=, nor a sweep)")
    if job == "eval" and cfg.agent not in FIXED_AGENTS and cfg.eval.checkpoint is None:
        raise ConfigError(f"evaluating agent={cfg.agent} needs its checkpoint: --checkpoint PATH (eval.checkpoint)")
    if cfg.agent == "completion_greedy" and _pretrains(job, cfg) and not cfg.policy.item_statistics:
        raise ConfigError("agent=completion_greedy ranks by the items' logged statistics: set policy.item_statistics=true "
                          "(or init_from= a policy pretrained with them)")
    ignored = ignored_keys(job, cfg)
    if ignored:
        command = f"longrec {job}" + ("" if job == "pretrain" else f" agent={cfg.agent}")
        by_reason: dict[str, list[str]] = {}
        for key, (value, _, why) in ignored.items():
            by_reason.setdefault(why, []).append(f"{key}={value!r}")
        listed = "; ".join(f"{', '.join(keys)} ({why})" for why, keys in by_reason.items())
        defaults = ", ".join(f"{key}={default!r}" for key, (_, default, _) in ignored.items())
        raise ConfigError(f"`{command}` would ignore {listed}; remove them or set their defaults: {defaults}")
    check_files(job, cfg)


def ignored_keys(job: str, cfg: ExperimentConfig) -> dict[str, tuple[Any, Any, str]]:
    """``{dotted key: (value, default, why)}`` of the non-default keys ``job`` would not read."""
    values, defaults = cfg.flat(), ExperimentConfig().flat()
    out: dict[str, tuple[Any, Any, str]] = {}
    for prefix, why in unread_keys(job, cfg):
        for key, value in values.items():
            if (key == prefix or key.startswith(prefix + ".")) and value != defaults.get(key, _MISSING):
                out.setdefault(key, (value, defaults.get(key), why))
    return out


_MISSING = object()


def _pretrains(job: str, cfg: ExperimentConfig) -> bool:
    """Whether ``job`` runs cross-entropy pretraining (``pretrain``, or a pretrained agent without ``init_from``)."""
    if job == "pretrain":
        return True
    return job in ("train", "quickstart") and agent_info(cfg.agent).from_pretrained and cfg.init_from is None


SEEDS_TRAIN_ONLY = "only `longrec train` launches one run per seed"


def unread_keys(job: str, cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """``(key or section, why)`` of everything ``job`` does not read for ``cfg.agent`` and ``data.source``."""
    agent = cfg.agent
    if job == "pretrain":
        why = "`longrec pretrain` stops after pretraining"
        keys = ("agent", "total_timesteps", "init_from", "resume", "env.num_envs", "ppo", "kl", "slateq", "eval")
        return [(key, why) for key in keys] + [("seeds", SEEDS_TRAIN_ONLY)] + _unread_by_pretraining(job, cfg)
    if job == "eval":
        why = "`longrec eval` evaluates a trained policy (--checkpoint)"
        keys = ("total_timesteps", "init_from", "resume", "env.num_envs", "data", "text", "policy", "pretrain", "ppo",
                "kl", "slateq")
        out = [(key, why) for key in keys] + [("seeds", SEEDS_TRAIN_ONLY)]
        if agent in FIXED_AGENTS:
            out.append(("eval.checkpoint", f"agent {agent} has no checkpoint"))
        return out
    info = agent_info(agent)
    out = [("eval.checkpoint", f"`longrec {job}` evaluates the policy it trains")]
    if job != "train":
        out.append(("seeds", SEEDS_TRAIN_ONLY))
    if not info.from_pretrained:
        out.append(("init_from", f"agent {agent} does not start from a pretrained policy"))
    if _pretrains(job, cfg):
        out += _unread_by_pretraining(job, cfg)
    else:
        why = "init_from replaces pretraining" if info.from_pretrained else f"agent {agent} does not pretrain"
        out += [("data", why), ("pretrain", why)]
        if agent == "ppo_scratch":
            out.append(("text.cache_dir", "PPO from scratch encodes the item texts with the default cache"))
        else:
            why = "the policy is loaded from init_from" if info.from_pretrained else f"agent {agent} has no LLM policy"
            out += [("policy", why), ("text", why)]
    if info.trainer == "none":
        why = f"agent {agent} has nothing to train"
        out += [(key, why) for key in ("total_timesteps", "resume", "env.num_envs", "ppo", "kl", "slateq")]
    elif info.trainer == "slateq":
        out += [(key, "agent slateq trains with SlateQ, not PPO") for key in ("resume", "ppo", "kl")]
    else:
        out.append(("slateq", f"agent {agent} trains with PPO"))
        if agent != "ce_ppo_kl":
            out.append(("kl", f"agent {agent} has no KL penalty (ce_ppo_kl has)"))
        if agent != "ppo_mlp":
            out += [(f"ppo.{key}", "only agent ppo_mlp has an MLP policy") for key in ("mlp_embedding_dim", "mlp_net_arch")]
    return out


def _unread_by_pretraining(job: str, cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """What pretraining on ``data.source`` does not read of the ``data``, ``text``, ``policy``, ``pretrain`` and
    ``movielens`` sections. ``pretrain.dp`` (user-level differential privacy) is read on both sources."""
    out = _unread_by_privacy(cfg)
    if cfg.data.source == "simulator":
        why = "`longrec pretrain` keeps the item embeddings fixed (the option is llm_policy.pretrain's)"
        return out + [("movielens", "used with data.source=movielens"),
                      ("pretrain.finetune_text_encoder", why), ("pretrain.text_encoder_lr", why)]
    why = "MovieLens next-item pretraining reads the movielens section (its model: movielens.train.model)"
    keys = ["data.num_users", "data.behaviour", "text.cache_dir",
            *(f"pretrain.{f.name}" for f in dataclasses.fields(PretrainConfig) if f.name != "dp"), "policy"]
    if job == "pretrain":
        keys.append("env.kwargs")
    return out + [(key, why) for key in keys]


def _unread_by_privacy(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """The ``pretrain.dp`` keys that are not read while it is off, and what its per-user clip replaces while it is on."""
    if not cfg.pretrain.dp.enabled:
        why = "pretrain.dp is off (set pretrain.dp.epsilon or pretrain.dp.noise_multiplier)"
        return [(f"pretrain.dp.{key}", why) for key in ("max_grad_norm", "delta", "accountant")]
    why = "with pretrain.dp each user's gradient is clipped to pretrain.dp.max_grad_norm instead"
    return [("movielens.train.grad_clip" if cfg.data.source == "movielens" else "pretrain.grad_clip", why)]


def _check_private_pretraining(cfg: ExperimentConfig) -> None:
    """``pretrain.dp`` reads no logged item statistics, needs Opacus, and on MovieLens one training window per user
    (the combinations that cannot run are refused before the missing package)."""
    if cfg.policy.item_statistics:
        raise ConfigError("pretrain.dp privatises the CE weights, not the logged item statistics the policy would read "
                          "(policy.item_statistics=true): set policy.item_statistics=false for private pretraining")
    try:
        require_opacus()
    except ImportError as exc:
        raise ConfigError(f"config key 'pretrain.dp': {exc}") from None
    if cfg.data.source != "movielens":
        return
    for key, needed in (("objective", "all_positions"), ("windows", "tail")):
        value = getattr(cfg.movielens.train, key)
        if value != needed:
            raise ConfigError(f"config key 'pretrain.dp' needs movielens.train.{key}={needed!r} (one window per user, "
                              f"the unit that is clipped); got {value!r}")


# --------------------------------------------------------------------------- setup


def setup_torch(cfg: ExperimentConfig) -> torch.device:
    """Apply ``torch_threads`` and resolve the device (the seeding block: every job seeds from ``cfg.seed``)."""
    if cfg.torch_threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.torch_threads))
        torch.set_num_threads(cfg.torch_threads)
    return resolve_device(cfg.device)


# --------------------------------------------------------------------------- jobs


def run_pretrain(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    """Cross-entropy pretraining of the LLM policy on simulator logs or MovieLens (``data.source``)."""
    distributed.from_main(lambda: check_config("pretrain", cfg))  # rank 0's files (data.path, ...) are checked
    return _pretrain(cfg, run)


def _pretrain(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    """CE pretraining; a resumed run continues from its last finished epoch. Under torchrun every rank runs
    this: rank 0 prepares the logs and embeddings and hands them to the others (``llm_policy.distributed``),
    and ranks > 0 hold an ``experiments.launch.FollowerRun``, which writes nothing."""
    if cfg.data.source == "movielens":
        return _pretrain_movielens(cfg, run)
    device = setup_torch(cfg)
    resuming = getattr(run, "resume", None) is not None
    if not resuming and hasattr(run, "metrics_lines"):  # a resumed pretraining logs its history again from here
        run.update_summary(pretrain_first_metrics_line=run.metrics_lines)

    def prepared() -> tuple[Any, torch.Tensor, str]:
        logs, embeddings = simulator_logs(cfg, run), torch.as_tensor(item_embeddings(cfg, run, device)).cpu()
        if cfg.policy.item_statistics:  # the items' logged engagement, appended to their text embeddings
            embeddings = torch.as_tensor(with_item_statistics(embeddings, logs))
        return logs, embeddings, make_core(cfg.env.id, num_users=1, **cfg.env.kwargs).catalog.fingerprint()

    logs, embeddings, catalog = distributed.from_main(prepared)
    result = pretrain(logs, embeddings, config=cfg.pretrain, model_config=cfg.policy,
                      output_dir=run.checkpoints_dir / "pretrained", seed=cfg.seed, device=device,
                      progress=cfg.logging.progress, catalog=catalog, resume=resuming)
    for row in result.metrics.get("history", []):
        run.log({f"pretrain/{k}": v for k, v in row.items() if k != "epoch"}, step=None)
    metrics = {f"pretrain/{k}": v for k, v in result.metrics.items() if _is_number(v)}
    if result.best_dir is None:  # a rank > 0: rank 0 records the policy
        return {"policy_dir": None, "metrics": metrics}
    run.update_summary(metrics=metrics, pretrained_policy=str(result.best_dir))
    run.log_checkpoint(result.best_dir, final=run.job_type == "pretrain")
    _say_privacy(metrics)
    return {"policy_dir": Path(result.best_dir), "metrics": metrics}


def _say_privacy(metrics: Mapping[str, Any]) -> None:
    """One line with the (epsilon, delta) a private pretraining spent (nothing without DP)."""
    if "pretrain/dp_epsilon" in metrics:
        print(f"user-level DP: epsilon = {metrics['pretrain/dp_epsilon']:.3f} spent at delta = "
              f"{metrics['pretrain/dp_delta']:.3g} ({metrics['pretrain/dp_steps']} steps, noise multiplier "
              f"{metrics['pretrain/dp_noise_multiplier']:.3f}, {metrics['pretrain/dp_users']} training users)", flush=True)


def _pretrain_movielens(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    """Next-item pretraining on a MovieLens folder (``agents.movielens_pretrain.pretrain_movielens``)."""
    from envs.movielens import load_movielens

    text_model = resolve_text_encoder(cfg.text.encoder, run.path, lambda: load_movielens(cfg.data.path).texts,
                                      seed=cfg.seed)
    result = pretrain_movielens(cfg.movielens, data_path=cfg.data.path, text_model=text_model, seed=cfg.seed,
                                device=str(setup_torch(cfg)), output_dir=run.checkpoints_dir / "pretrained",
                                progress=print if cfg.logging.progress else None, dp=cfg.pretrain.dp)
    if cfg.pretrain.dp.enabled:  # the epsilon spent after each epoch
        for row in result.train_log["history"]:
            run.log({"pretrain/dp_epsilon": row["dp_epsilon"], "pretrain/valid_ndcg@10": row["valid_ndcg@10"]},
                    step=None)
    metrics = {f"pretrain/{k}": v for k, v in result.flat_metrics().items() if _is_number(v)}
    run.update_summary(metrics=metrics, pretrained_policy=str(result.best_dir))
    run.log_checkpoint(result.best_dir, final=run.job_type == "pretrain")
    _say_privacy(metrics)
    return {"policy_dir": Path(result.best_dir), "metrics": metrics}


def item_embeddings(cfg: ExperimentConfig, run: Any, device: torch.device) -> Any:
    """Text embeddings ``(N, d)`` of ``env.id``'s catalog with ``text.encoder`` (cached on disk)."""
    catalog = make_core(cfg.env.id, num_users=1, **cfg.env.kwargs).catalog
    encoder = ItemTextEncoder(text_encoder_path(cfg, run), cache_dir=cfg.text.cache_dir, device=device,
                              show_progress=cfg.logging.progress)
    return encoder.encode_catalog(catalog)


def simulator_logs(cfg: ExperimentConfig, run: Any) -> Any:
    """Logs of ``data.behaviour`` on ``env.id`` (or the ``.npz`` at ``data.path``), saved in the run folder
    (and read back from there when the run resumes)."""
    if cfg.data.path:
        return load_logs(cfg.data.path)
    if getattr(run, "resume", None) is not None and (run.path / "logs.npz").is_file():
        return load_logs(run.path / "logs.npz")
    return generate_logs(cfg.env.id, cfg.data.num_users, seed=cfg.seed, path=run.path / "logs.npz",
                         behaviour=cfg.data.behaviour, progress=cfg.logging.progress, **cfg.env.kwargs)


def run_train(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    """Train ``cfg.agent`` (CE pretraining first where it needs it), then evaluate it against the baselines."""
    check_config("train", cfg)
    return _train(cfg, run)


def _train(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    if cfg.agent in FIXED_AGENTS:
        run.update_summary(note=f"{cfg.agent} has nothing to train; evaluated directly")
        return _evaluate(cfg, run)
    device = setup_torch(cfg)
    init_from = cfg.init_from
    if cfg.agent in PRETRAINED_AGENTS and init_from is None:
        init_from = _pretrained_before(run) or str(_pretrain(cfg, run)["policy_dir"])
    learned = pretrained_agents(init_from)
    if agent_info(cfg.agent).trainer == "none":  # pctr_greedy, completion_greedy: the CE start, read, not trained
        return _evaluate(cfg, run, checkpoint=init_from, checkpoints=learned)
    if cfg.agent == "slateq":
        result = train_slateq_agent(cfg, run, device)
    else:
        result = train_with_ppo(cfg, run, init_from if cfg.agent in PRETRAINED_AGENTS else None, device)
    checkpoint = result["checkpoint"]
    run.log_checkpoint(checkpoint, final=True)
    curve = save_learning_curve(run)
    if curve is not None:
        run.log_plot("plots/learning_curve", curve)
    run.update_summary(metrics={f"train/{k}": v for k, v in dict(result.get("metrics", {})).items()})
    return _evaluate(cfg, run, checkpoint=str(checkpoint), checkpoints=learned, agents=result.get("agents"))


def _pretrained_before(run: Any) -> str | None:
    """A resumed run's own pretrained policy when its pretraining finished (it is not repeated), else None
    (an unfinished pretraining continues from its last epoch)."""
    if getattr(run, "resume", None) is None:
        return None
    recorded = run.summary.get("pretrained_policy")
    if recorded and (Path(recorded) / "config.json").is_file():
        return str(recorded)
    folder = run.checkpoints_dir / "pretrained"  # finished (metrics.json), but stopped before the summary said so
    if (folder / "metrics.json").is_file() and (folder / "best" / "config.json").is_file():
        return str(folder / "best")
    return None


def train_with_ppo(cfg: ExperimentConfig, run: Any, init_from: str | None, device: torch.device) -> dict[str, Any]:
    """``agents.ppo.train_ppo``: LLM policy (from the CE-pretrained folder or from scratch) or the MLP/ID policy.

    Saves the final policy (``checkpoints/final_policy`` via ``save_pretrained`` for the LLM
    policy, ``checkpoints/final.zip`` for the MLP policy); the trained model is evaluated
    in memory right after.
    """
    policy = "mlp" if cfg.agent == "ppo_mlp" else "llm"
    from_scratch = policy == "llm" and init_from is None
    resuming = getattr(run, "resume", None) is not None
    if not resuming and hasattr(run, "metrics_lines"):  # where PPO's rows begin (a resume without last.pt cuts here)
        run.update_summary(ppo_first_metrics_line=run.metrics_lines)
    result = train_ppo(
        cfg.ppo, cfg.total_timesteps, env_id=cfg.env.id, env_kwargs=dict(cfg.env.kwargs), num_envs=cfg.env.num_envs,
        policy=policy, pretrained_path=init_from if policy == "llm" else None,
        model_config=cfg.policy if from_scratch else None,
        text_encoder=text_encoder_path(cfg, run) if from_scratch else None,
        kl=cfg.kl if cfg.agent == "ce_ppo_kl" and cfg.kl.coef > 0 else None, seed=cfg.seed, device=device,
        checkpoint_dir=str(run.checkpoints_dir / "ppo"), metrics_sink=run.log, resume=resuming,
        progress=cfg.logging.progress, eval_seed=cfg.eval.seeds[0],
        checkpoint_extra=(lambda: {"metrics_lines": run.metrics_lines}) if hasattr(run, "metrics_lines") else None)
    if result.interrupted:
        raise KeyboardInterrupt(f"PPO training interrupted at step {result.num_timesteps} (checkpoint saved)")
    model = result.model
    if policy == "llm":
        checkpoint = model.policy.save_pretrained(run.checkpoints_dir / "final_policy")
    else:
        checkpoint = run.checkpoints_dir / "final.zip"
        model.save(checkpoint)

    def trained(core: Any) -> Any:
        return make_baseline("ppo_mlp", core, model=model, seed=cfg.seed)  # PolicyAgent over any SB3 policy

    metrics = {"num_timesteps": result.num_timesteps}
    if result.selected_step is not None:  # ppo.keep_best: the weights of the best validation evaluation
        metrics["ppo/selected_step"] = result.selected_step
    return {"checkpoint": checkpoint, "metrics": metrics, "agents": {cfg.agent: trained}}


def text_encoder_path(cfg: ExperimentConfig, run: Any) -> str | None:
    """``text.encoder`` as a folder: None = bundled MiniLM, ``tiny`` = a random tiny BERT in the run folder."""
    return resolve_text_encoder(cfg.text.encoder, run.path,
                                lambda: make_core(cfg.env.id, num_users=1, **cfg.env.kwargs).catalog.texts, seed=cfg.seed)


def train_slateq_agent(cfg: ExperimentConfig, run: Any, device: torch.device) -> dict[str, Any]:
    """``agents.slateq.train_slateq`` with the ``slateq`` section for ``total_timesteps`` steps."""
    steps = cfg.total_timesteps
    agent = train_slateq(cfg.env.id, steps, cfg.slateq, num_envs=cfg.env.num_envs, seed=cfg.seed,
                         env_kwargs=dict(cfg.env.kwargs), metrics_sink=run.log,
                         log_interval=max(steps // 50, cfg.env.num_envs), device=device, progress=cfg.logging.progress)
    return {"checkpoint": agent.save(run.checkpoints_dir / "slateq.pt"), "metrics": {}}


def run_eval(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    """Evaluate ``cfg.agent`` (from ``eval.checkpoint`` when it is learned) and ``eval.baselines`` on fresh users."""
    check_config("eval", cfg)
    checkpoint = None if cfg.eval.checkpoint is None else resolve_checkpoint(cfg.eval.checkpoint, cfg.agent)
    return _evaluate(cfg, run, checkpoint=checkpoint)


def _evaluate(cfg: ExperimentConfig, run: Any, checkpoint: str | None = None,
              checkpoints: Mapping[str, str] | None = None, agents: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """Evaluate ``cfg.agent`` and ``eval.baselines`` on fresh users; table, bar plot and summary.

    ``checkpoint`` is the trained policy of ``cfg.agent``; ``checkpoints`` maps other learned
    agents to theirs (e.g. ``pctr_greedy`` -> the pretrained policy); ``agents`` maps names to
    ready agent factories ``core -> Agent`` (e.g. the model just trained, evaluated in memory).
    A learned baseline without a checkpoint is left out (noted in the summary).
    """
    paths = dict(checkpoints or {})
    if checkpoint:
        paths[cfg.agent] = checkpoint
    ready = dict(agents or {})
    for name in ready:
        paths.setdefault(name, "<in memory>")
    setup_torch(cfg)
    names = [n for n in dict.fromkeys([cfg.agent, *cfg.eval.baselines]) if n in FIXED_AGENTS or n in paths]
    skipped = [n for n in dict.fromkeys(cfg.eval.baselines) if n not in names]
    rows: dict[str, dict[str, float]] = {}
    per_user: dict[str, np.ndarray] = {}
    for name in names:
        spec = ready[name] if name in ready else agent_spec(name, paths.get(name), cfg.seed)
        result = evaluate_agent(agent=spec, env_id=cfg.env.id, num_users=cfg.eval.num_users,
                                seeds=list(cfg.eval.seeds), env_kwargs=dict(cfg.env.kwargs), name=name,
                                progress=cfg.logging.progress)
        rows[name] = metric_row(result.row)
        for metric, source in PER_USER_METRICS.items():
            per_user[f"{name}/{metric}"] = np.concatenate([record.values[source] for record in result.records])
        per_user[EVAL_SEED_KEY] = np.concatenate([np.full(len(record.values["return"]), record.seed)
                                                  for record in result.records])
    save_per_user(run.path / PER_USER_FILE, per_user)
    own = {f"eval/{k}": v for k, v in rows[cfg.agent].items()}
    run.log(own, step=None)
    run.log_table("eval/agents", [{"agent": name, **row} for name, row in rows.items()])
    run.update_summary(metrics=own, agents=rows, **({"skipped_agents": skipped} if skipped else {}))
    plot = save_agent_bars(rows, run.plots_dir / "eval_agents.png", title=f"{cfg.env.id}: {cfg.eval.num_users} "
                           f"users x {len(cfg.eval.seeds)} seed(s)")
    if plot is not None:
        run.log_plot("plots/eval_agents", plot)
    return {"metrics": own, "agents": rows}


PER_USER_FILE = "eval_per_user.npz"
"""Per-user outcomes of every agent a run evaluated, ``<agent>/<metric>`` -> ``(users,)``: the users of
``eval.seeds`` in order, the same users for every agent and run with these seeds (for paired differences);
``eval_seed`` -> ``(users,)`` the evaluation seed each user was drawn with."""
PER_USER_METRICS = {"return": "return", "retention": "return_rate", "sessions": "sessions"}
"""saved name -> ``agents.evaluate.run_lives`` value: long-term return, share of sessions the user came
back after, sessions lived"""
EVAL_SEED_KEY = "eval_seed"


def save_per_user(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write :data:`PER_USER_FILE` atomically."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def load_per_user(run_dir: str | Path) -> dict[str, np.ndarray]:
    """``<agent>/<metric>`` -> per-user values of a finished run (see :data:`PER_USER_FILE`)."""
    with np.load(Path(run_dir) / PER_USER_FILE) as archive:
        return {key: archive[key] for key in archive.files}


def pretrained_agents(policy_dir: str | None) -> dict[str, str]:
    """The agents read from a CE-pretrained policy folder: ``pctr_greedy``, and ``completion_greedy`` when the
    policy carries logged item statistics (``policy.item_statistics``); none without a folder."""
    if policy_dir is None:
        return {}
    agents = {"pctr_greedy": policy_dir}
    config = Path(policy_dir) / "config.json"
    if config.is_file() and json.loads(config.read_text())["model_config"].get("item_statistics"):
        agents["completion_greedy"] = policy_dir
    return agents


def agent_spec(name: str, checkpoint: str | None, seed: int) -> Any:
    """What ``agents.evaluate.evaluate_agent`` takes: a baseline name, or a factory ``core -> Agent``."""
    if checkpoint is None:
        return name
    # an LLM policy folder is used greedily (as pctr_greedy; completion_greedy reads its item statistics);
    # a .zip is SB3 PPO's; a .pt SlateQ's
    kind = {"llm_policy": "pctr_greedy", "sb3_zip": "ppo_mlp", "slateq": "slateq"}[agent_info(name).checkpoint]
    kind = "completion_greedy" if name == "completion_greedy" else kind
    return lambda core: make_baseline(kind, core, seed=seed, path=checkpoint)


def metric_row(row: Mapping[str, Any]) -> dict[str, float]:
    """Numeric metrics of an evaluation row, ``return_rate`` named ``retention``; bookkeeping dropped."""
    out = {}
    for key, value in row.items():
        if _is_number(value) and key not in ("seconds", "env_steps"):
            out[key.replace("return_rate", "retention", 1) if key.startswith("return_rate") else key] = float(value)
    return out


def run_quickstart(cfg: ExperimentConfig) -> Path:
    """The README's main job: logs -> CE pretraining -> PPO + KL -> evaluation vs baselines; returns the run folder."""
    from experiments.run import Run

    check_config("quickstart", cfg)
    with Run.create(cfg, job_type="quickstart") as run:
        _train(cfg, run)
    return run.path


JOBS: dict[str, Callable[[ExperimentConfig, Any], dict[str, Any]]] = {
    "train": run_train,
    "pretrain": run_pretrain,
    "eval": run_eval,
}
"""Jobs a sweep trial (or a W&B agent's ``longrec <job>`` command) can run."""


# --------------------------------------------------------------------------- helpers


def save_agent_bars(rows: Mapping[str, Mapping[str, float]], path: Path, title: str = "") -> Path | None:
    """Bar chart of long-term return / retention / CTR per agent with CI error bars (only metrics present)."""
    from experiments.compare import BOOKKEEPING, AgentStat, plot_bars

    stats = {name: {m: AgentStat(row[m], row.get(f"{m}_ci95", math.nan), 1) for m in row
                    if not m.endswith("_ci95") and m not in BOOKKEEPING} for name, row in rows.items()}
    return plot_bars(stats, path, title=title)


def save_learning_curve(run: Any) -> Path | None:
    """``plots/learning_curve.png``: held-out return against steps (``ppo.eval_every``), else the
    finished-episode average (labelled as such); None when the run logged neither."""
    from experiments.compare import RunRecord, plot_curves

    record = RunRecord(path=run.path, env=run.cfg.env.id, label=run.cfg.agent, agent=run.cfg.agent,
                       seed=run.cfg.seed, status="running", metrics={}, agents={})
    for metric in CURVE_METRICS:
        path = plot_curves([record], metric, run.plots_dir / "learning_curve.png")
        if path is not None:
            return path
    return None


CURVE_METRICS = ("heldout/return", "charts/episodic_return")
"""learning-curve metrics, preferred first: periodic evaluation on held-out users, then the average
return of the episodes that ended in each window (a secondary curve: it favours short lives early)"""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
