"""The one place where ``experiments`` calls the packages that do the work.

The CLI, the sweep runner and W&B agents all go through four jobs::

    run_train(cfg: ExperimentConfig, run: Run) -> dict[str, Any]
    run_pretrain(cfg: ExperimentConfig, run: Run) -> dict[str, Any]
    run_eval(cfg: ExperimentConfig, run: Run) -> dict[str, Any]
    run_quickstart(cfg: ExperimentConfig) -> Path

Each job takes the validated config and an open :class:`experiments.run.Run`
(folder + W&B), logs metrics through ``run.log(metrics, step)``, records its
final numbers in ``summary.json`` via ``run.update_summary(metrics=...)`` and
returns them. The seams the other packages fill (called with keyword arguments,
so they never import ``experiments``) are listed in :data:`BACKENDS`; a missing
one raises ``RuntimeError("... requires agents.ppo.train_ppo (not yet available) ...")``
before any work starts.

Metric names follow CleanRL: training curves under ``charts/`` and ``losses/``,
final evaluation of the run's own agent under ``eval/`` (``eval/return``,
``eval/return_ci95``, ``eval/ctr``, ``eval/retention`` (the evaluator's return rate), ...); other agents
evaluated in the same run go to ``summary["agents"]``.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from experiments.config import ConfigError, ExperimentConfig

FIXED_AGENTS = ("random", "popularity", "myopic", "oracle")
"""Agents with nothing to train: ``train`` evaluates them directly."""
PRETRAINED_AGENTS = ("ce_ppo", "ce_ppo_kl", "pctr_greedy")
"""Agents that start from the cross-entropy-pretrained LLM policy."""
PPO_AGENTS = ("ce_ppo", "ce_ppo_kl", "ppo_scratch", "ppo_mlp")
"""Agents trained with PPO."""

BACKENDS: dict[str, str] = {
    "pretrain": "llm_policy.pretrain:pretrain",
    "ppo": "agents.ppo:train_ppo",
    "slateq": "agents.slateq:train_slateq",
    "evaluate": "agents.evaluate:evaluate_agent",
    "movielens": "agents.offline_protocol:pretrain_movielens",
}
"""Seams filled by the other packages (``module:function``), called with keyword arguments:

* ``llm_policy.pretrain.pretrain(logs, item_embeddings, config=PretrainConfig, model_config=
  SlatePolicyConfig, output_dir)`` -> ``PretrainResult(model, metrics, best_dir)`` (wired).
* ``agents.offline_protocol.pretrain_movielens(data_path, policy_config, text_encoder, epochs, batch_size, learning_rate,
  min_interactions, seed, device, out_dir, progress)`` -> ``{"policy_dir": folder, "metrics": {...}}`` (wired).
* ``agents.ppo.train_ppo(config=agents.ppo.PPOConfig, metrics_sink, resume, progress)`` ->
  ``PPOResult(model, num_timesteps, interrupted, checkpoint, resumed_from)`` (wired,
  :func:`train_with_ppo`; the KL penalty only for ``ce_ppo_kl``).
* ``agents.slateq.train_slateq(env_id, total_steps, config=SlateQConfig, seed, env_kwargs,
  metrics_sink, log_interval, device, progress)`` -> ``SlateQAgent`` (wired, :func:`train_slateq`).
* ``evaluate_agent(agent, env_id, num_users, seeds, env_kwargs, name, progress)`` -> an object
  with ``.row`` = ``{metric: float}`` (``return``, ``sessions``, ``return_rate``, ``ctr``, ...,
  each with ``<m>_ci95``); ``agent`` is a baseline name or a factory ``core -> Agent``
  (see :func:`agent_spec`).

``log_fn(metrics: dict[str, float], step: int)`` is ``Run.log``: metrics.jsonl + W&B.
"""

LogFn = Callable[[Mapping[str, Any], int | None], None]


def require(seam: str, needed_for: str) -> Callable[..., Any]:
    """The backend function of ``seam`` (see :data:`BACKENDS`), or a RuntimeError saying what is missing."""
    module_name, _, attr = BACKENDS[seam].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only a missing backend module counts as "not yet available"; a missing dependency inside it is real
        if exc.name is None or not module_name.startswith(exc.name):
            raise
        raise RuntimeError(f"{needed_for} requires {module_name}.{attr} (not yet available: "
                           f"module {module_name} is missing)") from None
    function = getattr(module, attr, None)
    if function is None:
        raise RuntimeError(f"{needed_for} requires {module_name}.{attr} (not yet available: "
                           f"{module_name} has no {attr!r})")
    return function


def backend_available(seam: str) -> bool:
    try:
        require(seam, "check")
    except RuntimeError:
        return False
    return True


def preflight(job: str, cfg: ExperimentConfig) -> None:
    """Raise (RuntimeError / ConfigError) if ``job`` cannot run with ``cfg``, before any run folder exists."""
    if job == "pretrain":
        require("pretrain", "`longrec pretrain`")
    elif job in ("train", "quickstart") and cfg.agent not in FIXED_AGENTS:
        require("slateq" if cfg.agent == "slateq" else "ppo", f"`longrec {job} agent={cfg.agent}`")
        if cfg.agent in PRETRAINED_AGENTS and cfg.policy.init_from is None:
            require("pretrain", f"`longrec {job} agent={cfg.agent}` (CE pretraining)")
    if job in ("train", "eval", "quickstart"):
        require("evaluate", f"`longrec {job}` (evaluation)")
    if cfg.device == "cuda":
        resolve_device(cfg.device)


# --------------------------------------------------------------------------- setup


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is a ConfigError."""
    if device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if device == "cuda":
            raise ConfigError("config key 'device' is 'cuda' but torch is not installed") from None
        return "cpu"
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("config key 'device' is 'cuda' but no CUDA device is visible; "
                          "use device=auto or device=cpu")
    return "cuda" if has_cuda else "cpu"


def setup_torch(cfg: ExperimentConfig) -> str:
    """Apply ``torch_threads`` and resolve the device (the seeding block: every job seeds from ``cfg.seed``)."""
    if cfg.torch_threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.torch_threads))
        try:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        except ImportError:
            pass
    return resolve_device(cfg.device)


def policy_config_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    """Fields of ``cfg.policy`` that ``llm_policy.SlatePolicyConfig`` knows (passed through by name)."""
    fields = asdict(cfg.policy)
    try:
        from llm_policy.config import SlatePolicyConfig
    except ImportError:
        return fields
    known = set(SlatePolicyConfig.__dataclass_fields__)
    return {k: v for k, v in fields.items() if k in known}


# --------------------------------------------------------------------------- jobs


def run_pretrain(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    """Cross-entropy pretraining of the LLM policy on simulator logs (or real data through its own seam)."""
    if cfg.data.source == "movielens":
        return run_movielens_pretrain(cfg, run)
    require("pretrain", "`longrec pretrain`")
    from llm_policy.config import SlatePolicyConfig
    from llm_policy.pretrain import PretrainConfig as LLMPretrainConfig
    from llm_policy.pretrain import pretrain

    device = setup_torch(cfg)
    logs = simulator_logs(cfg, run)
    embeddings = item_embeddings(cfg, run, device)
    settings = LLMPretrainConfig(
        target=cfg.pretrain.target, epochs=cfg.pretrain.epochs, batch_size=cfg.pretrain.batch_size,
        lr=cfg.pretrain.learning_rate, weight_decay=cfg.pretrain.weight_decay,
        val_fraction=cfg.pretrain.val_fraction, patience=cfg.pretrain.patience,
        max_batches_per_epoch=cfg.pretrain.max_batches_per_epoch, seed=cfg.seed, device=device,
        progress=cfg.logging.progress)
    result = pretrain(logs, embeddings, config=settings, model_config=SlatePolicyConfig(**policy_config_kwargs(cfg)),
                      output_dir=run.checkpoints_dir / "pretrained")
    for row in result.metrics.get("history", []):
        run.log({f"pretrain/{k}": v for k, v in row.items() if k != "epoch"}, step=None)
    metrics = {f"pretrain/{k}": v for k, v in result.metrics.items() if _is_number(v)}
    run.update_summary(metrics=metrics, pretrained_policy=str(result.best_dir))
    run.log_checkpoint(result.best_dir, final=run.job_type == "pretrain")
    return {"policy_dir": Path(result.best_dir), "metrics": metrics}


def run_movielens_pretrain(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    """Next-item pretraining on a MovieLens folder (the real-data seam, see :data:`BACKENDS`)."""
    function = require("movielens", "`longrec pretrain data.source=movielens`")
    if cfg.data.path and not Path(cfg.data.path).is_dir():
        raise ConfigError(f"config key 'data.path' must name a MovieLens folder (ratings.csv, movies.csv) or be "
                          f"null (the project's copy of ml-latest-small, or $LONGREC_MOVIELENS); got {cfg.data.path!r}")
    result = function(data_path=cfg.data.path, policy_config=policy_config_kwargs(cfg),
                      text_encoder=cfg.policy.text_encoder, epochs=cfg.pretrain.epochs,
                      batch_size=cfg.pretrain.batch_size, learning_rate=cfg.pretrain.learning_rate,
                      min_interactions=cfg.data.min_interactions, seed=cfg.seed, device=setup_torch(cfg),
                      out_dir=run.checkpoints_dir / "pretrained", progress=cfg.logging.progress)
    metrics = {f"pretrain/{k}": v for k, v in dict(result.get("metrics", {})).items() if _is_number(v)}
    run.update_summary(metrics=metrics, pretrained_policy=str(result["policy_dir"]))
    run.log_checkpoint(result["policy_dir"], final=run.job_type == "pretrain")
    return {"policy_dir": Path(result["policy_dir"]), "metrics": metrics}


def item_embeddings(cfg: ExperimentConfig, run: Any, device: str) -> Any:
    """Text embeddings ``(N, d)`` of ``env.id``'s catalog with ``policy.text_encoder`` (cached on disk)."""
    from envs.registration import make_core
    from llm_policy.text_encoder import ItemTextEncoder

    catalog = make_core(cfg.env.id, num_users=1, **cfg.env.kwargs).catalog
    encoder = ItemTextEncoder(text_encoder_path(cfg, run), cache_dir=cfg.policy.cache_dir, device=device,
                              show_progress=cfg.logging.progress)
    return encoder.encode_catalog(catalog)


def simulator_logs(cfg: ExperimentConfig, run: Any) -> Any:
    """Logs of ``data.behaviour`` on ``env.id`` (or the ``.npz`` at ``data.path``), saved in the run folder."""
    from envs.logging_policy import generate_logs, load_logs

    if cfg.data.path:
        return load_logs(cfg.data.path)
    return generate_logs(cfg.env.id, cfg.data.num_users, seed=cfg.seed, path=run.path / "logs.npz",
                         behaviour=cfg.data.behaviour, progress=cfg.logging.progress, **cfg.env.kwargs)


def run_train(cfg: ExperimentConfig, run: Any) -> dict[str, Any]:
    """Train ``cfg.agent`` (CE pretraining first where it needs it), then evaluate it against the baselines."""
    if cfg.agent in FIXED_AGENTS:
        run.update_summary(note=f"{cfg.agent} has nothing to train; evaluated directly")
        return run_eval(cfg, run)
    # fail before any work if the training back-end is missing
    trainer = require("slateq" if cfg.agent == "slateq" else "ppo", f"`longrec train agent={cfg.agent}`")
    if cfg.agent in PRETRAINED_AGENTS:
        require("pretrain", f"`longrec train agent={cfg.agent}` (CE pretraining)")
    require("evaluate", f"`longrec train agent={cfg.agent}` (evaluation)")
    device = setup_torch(cfg)
    init_from = cfg.policy.init_from
    if cfg.agent in PRETRAINED_AGENTS and init_from is None:
        init_from = str(run_pretrain(cfg, run)["policy_dir"])
    learned = {"pctr_greedy": init_from} if init_from is not None else {}
    if cfg.agent == "pctr_greedy":
        return run_eval(cfg, run, checkpoint=init_from, checkpoints=learned)
    if cfg.agent == "slateq":
        result = train_slateq(cfg, run, trainer, device)
    else:
        result = train_with_ppo(cfg, run, trainer, init_from if cfg.agent in PRETRAINED_AGENTS else None, device)
        if result.get("interrupted"):
            raise KeyboardInterrupt("PPO training interrupted (checkpoint saved)")
    checkpoint = result["checkpoint"]
    run.log_checkpoint(checkpoint, final=True)
    curve = save_learning_curve(run)
    if curve is not None:
        run.log_plot("plots/learning_curve", curve)
    run.update_summary(metrics={f"train/{k}": v for k, v in dict(result.get("metrics", {})).items()})
    return run_eval(cfg, run, checkpoint=str(checkpoint), checkpoints=learned, agents=result.get("agents"))


def train_with_ppo(cfg: ExperimentConfig, run: Any, trainer: Callable[..., Any], init_from: str | None,
                   device: str) -> dict[str, Any]:
    """``agents.ppo.train_ppo``: LLM policy (from the CE-pretrained folder or from scratch) or the MLP/ID policy.

    Saves the final policy (``checkpoints/final_policy`` via ``save_pretrained`` for the LLM
    policy, ``checkpoints/final.zip`` for the MLP policy); the trained model is evaluated
    in memory right after.
    """
    from agents.kl import KLConfig
    from agents.ppo import PPOConfig as AgentPPOConfig

    policy = "mlp" if cfg.agent == "ppo_mlp" else "llm"
    kl = None
    if cfg.agent == "ce_ppo_kl" and cfg.ppo.kl_coef > 0:
        kl = KLConfig(coef=cfg.ppo.kl_coef, estimator=cfg.ppo.kl_estimator, target=cfg.ppo.kl_target)
    from_scratch = policy == "llm" and init_from is None
    settings = AgentPPOConfig(
        env_id=cfg.env.id, env_kwargs=dict(cfg.env.kwargs), policy=policy,
        pretrained_path=init_from if policy == "llm" else None,
        model_config=policy_config_kwargs(cfg) if from_scratch else None,
        text_encoder=text_encoder_path(cfg, run) if from_scratch else None,
        total_steps=cfg.ppo.total_timesteps, num_envs=cfg.env.num_envs, n_steps=cfg.ppo.n_steps,
        batch_size=cfg.ppo.batch_size, n_epochs=cfg.ppo.n_epochs, learning_rate=cfg.ppo.learning_rate,
        gamma=cfg.ppo.gamma, gae_lambda=cfg.ppo.gae_lambda, clip_range=cfg.ppo.clip_range, ent_coef=cfg.ppo.ent_coef,
        vf_coef=cfg.ppo.vf_coef, max_grad_norm=cfg.ppo.max_grad_norm, kl=kl, seed=cfg.seed, device=device,
        checkpoint_dir=str(Path(cfg.ppo.resume) if cfg.ppo.resume else run.checkpoints_dir / "ppo"),
        checkpoint_every=cfg.ppo.checkpoint_every)
    result = trainer(settings, metrics_sink=run.log, resume=cfg.ppo.resume is not None,
                     progress=cfg.logging.progress)
    model = result.model
    if policy == "llm":
        checkpoint = model.policy.save_pretrained(run.checkpoints_dir / "final_policy")
    else:
        checkpoint = run.checkpoints_dir / "final.zip"
        model.save(checkpoint)
    from agents.baselines import make_baseline

    def trained(core: Any) -> Any:
        return make_baseline("ppo_mlp", core, model=model, seed=cfg.seed)  # PolicyAgent over any SB3 policy

    return {"checkpoint": checkpoint, "metrics": {"num_timesteps": result.num_timesteps},
            "interrupted": result.interrupted, "agents": {cfg.agent: trained}}


def text_encoder_path(cfg: ExperimentConfig, run: Any) -> str | None:
    """``policy.text_encoder`` as a folder: None = bundled MiniLM, ``tiny`` = a random tiny BERT in the run folder."""
    name = cfg.policy.text_encoder
    if name == "minilm":
        return None
    if name == "tiny":
        from envs.registration import make_core
        from llm_policy.tiny import make_tiny_bert

        folder = run.path / "tiny_text_encoder"
        if not (folder / "config.json").exists():
            texts = make_core(cfg.env.id, num_users=1, **cfg.env.kwargs).catalog.texts
            make_tiny_bert(folder, texts, seed=cfg.seed)
        return str(folder)
    return name


def train_slateq(cfg: ExperimentConfig, run: Any, trainer: Callable[..., Any], device: str) -> dict[str, Any]:
    """``agents.slateq.train_slateq`` with the ``slateq`` section (passed through by field name)."""
    from agents.slateq import SlateQConfig

    known = set(SlateQConfig.__dataclass_fields__)
    settings = SlateQConfig(num_envs=cfg.env.num_envs, **{k: v for k, v in asdict(cfg.slateq).items() if k in known})
    steps = cfg.slateq.total_timesteps or cfg.ppo.total_timesteps
    agent = trainer(cfg.env.id, steps, config=settings, seed=cfg.seed, env_kwargs=dict(cfg.env.kwargs),
                    metrics_sink=run.log, log_interval=max(steps // 50, cfg.env.num_envs), device=device,
                    progress=cfg.logging.progress)
    return {"checkpoint": agent.save(run.checkpoints_dir / "slateq.pt"), "metrics": {}}


def run_eval(cfg: ExperimentConfig, run: Any, checkpoint: str | None = None,
             checkpoints: Mapping[str, str] | None = None, agents: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """Evaluate ``cfg.agent`` and ``eval.baselines`` on fresh users; table, bar plot and summary.

    ``checkpoint`` (else ``eval.checkpoint``) is the trained policy of ``cfg.agent``;
    ``checkpoints`` maps other learned agents to theirs (e.g. ``pctr_greedy`` -> the
    pretrained policy); ``agents`` maps names to ready agent factories ``core -> Agent``
    (e.g. the model just trained, evaluated in memory). A learned baseline without a
    checkpoint is left out (noted in the summary); the run's own learned agent without
    one is an error.
    """
    evaluate = require("evaluate", "`longrec eval`")
    checkpoint = checkpoint or cfg.eval.checkpoint
    paths = dict(checkpoints or {})
    if checkpoint:
        paths[cfg.agent] = checkpoint
    ready = dict(agents or {})
    for name in ready:
        paths.setdefault(name, "<in memory>")
    if cfg.agent not in FIXED_AGENTS and cfg.agent not in paths:
        raise ConfigError(f"evaluating agent={cfg.agent} needs its checkpoint: --checkpoint PATH (eval.checkpoint)")
    setup_torch(cfg)
    names = [n for n in dict.fromkeys([cfg.agent, *cfg.eval.baselines]) if n in FIXED_AGENTS or n in paths]
    skipped = [n for n in dict.fromkeys(cfg.eval.baselines) if n not in names]
    rows: dict[str, dict[str, float]] = {}
    for name in names:
        spec = ready[name] if name in ready else agent_spec(name, paths.get(name), cfg.seed)
        result = evaluate(agent=spec, env_id=cfg.env.id,
                          num_users=cfg.eval.num_users, seeds=list(cfg.eval.seeds), env_kwargs=dict(cfg.env.kwargs),
                          name=name, progress=cfg.logging.progress)
        rows[name] = metric_row(getattr(result, "row", result))
    own = {f"eval/{k}": v for k, v in rows[cfg.agent].items()}
    run.log(own, step=None)
    run.log_table("eval/agents", [{"agent": name, **row} for name, row in rows.items()])
    run.update_summary(metrics=own, agents=rows, **({"skipped_agents": skipped} if skipped else {}))
    plot = save_agent_bars(rows, run.plots_dir / "eval_agents.png", title=f"{cfg.env.id}: {cfg.eval.num_users} "
                           f"users x {len(cfg.eval.seeds)} seed(s)")
    if plot is not None:
        run.log_plot("plots/eval_agents", plot)
    return {"metrics": own, "agents": rows}


def agent_spec(name: str, checkpoint: str | None, seed: int) -> Any:
    """What ``agents.evaluate.evaluate_agent`` takes: a baseline name, or a factory ``core -> Agent``."""
    if checkpoint is None:
        return name
    from agents.baselines import make_baseline

    if name == "slateq":
        kind = "slateq"
    elif name == "pctr_greedy" or (Path(checkpoint).is_dir() and (Path(checkpoint) / "config.json").exists()):
        kind = "pctr_greedy"  # a save_pretrained folder of the LLM policy, used greedily
    else:
        kind = "ppo_mlp"  # an SB3 PPO .zip
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

    with Run.create(cfg, job_type="quickstart") as run:
        run_train(cfg, run)
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


def save_learning_curve(run: Any, metric: str = "charts/episodic_return") -> Path | None:
    """``plots/learning_curve.png`` of this run's training curve (None when it logged none)."""
    from experiments.compare import RunRecord, plot_curves

    record = RunRecord(path=run.path, env=run.cfg.env.id, label=run.cfg.agent, agent=run.cfg.agent,
                       seed=run.cfg.seed, status="running", metrics={}, agents={})
    return plot_curves([record], metric, run.plots_dir / "learning_curve.png")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
