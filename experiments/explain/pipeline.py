"""``longrec explain``: resolve the policies, record the lives, run the four analyses, write the report.

:func:`config_from_args` turns the command line into an :class:`ExplainConfig`, raising a one-line
``ConfigError`` for anything a user can get wrong before any work starts or any folder is made;
:func:`explain` does the work and returns an :class:`ExplainResult`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.config import ConfigError
from experiments.explain.fingerprint import ClickbaitRule
from experiments.explain.surrogate import SurrogateConfig

DEFAULT_USERS = 16
"""fresh users per policy (one whole life each)"""
DEFAULT_SEED = 1000
"""seed of the fresh users (the evaluation's default seed: users no training run has seen)"""
COMPARE_LABEL = "ce_pretrained"
"""label of a run folder's CE-pretrained policy, the default comparison"""


@dataclass(frozen=True)
class ExplainConfig:
    """What ``longrec explain`` explains and how."""

    policy: str
    """folder of the policy to explain (``save_pretrained``: config.json + model.safetensors)"""
    label: str
    """the policy's name in figures and tables"""
    env_id: str
    """registered environment the policy acts in"""
    out_dir: str
    """folder of report.html, figures/ and explain.json"""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """keyword arguments of the environment (a run folder's env.kwargs)"""
    compare: str | None = None
    """folder of a second policy shown side by side (None: the policy alone)"""
    compare_label: str | None = None
    """the second policy's name"""
    users: int = DEFAULT_USERS
    """fresh users, one whole life each, the same for every policy"""
    seed: int = DEFAULT_SEED
    """seed of the fresh users"""
    visible_logs: str | None = None
    """logs ``.npz`` of a deployed system (a run's logs.npz) for the surrogate's text probes; None: the
    visible part of the explained lives (shown items, clicks, watch fractions)"""
    attribution_states: int = 3
    """states (users' observations) whose greedy slates are attributed"""
    attribution_steps: int = 64
    """Integrated Gradients steps"""
    timeline_users: int = 2
    """users whose lives are drawn"""
    clickbait: ClickbaitRule = field(default_factory=ClickbaitRule)
    """what counts as clickbait"""
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    """how the surrogate is fitted"""
    wandb: bool = False
    """also log the figures and tables as a W&B run (job type explain)"""
    progress: bool = True
    """progress bars"""
    run_folder: str | None = None
    """the run folder the policies come from (for the report's header)"""


@dataclass
class ExplainResult:
    """Where the report is and its main numbers."""

    out_dir: Path
    report: Path
    files: list[Path]
    numbers: dict[str, Any]
    seconds: float
    wandb_url: str | None = None


# --------------------------------------------------------------------------- resolving the command line


def config_from_args(run_folder: str | None = None, policy: str | None = None, env: str | None = None,
                     env_kwargs: Mapping[str, Any] | None = None, compare: str | None = None,
                     users: int = DEFAULT_USERS, seed: int = DEFAULT_SEED, out: str | None = None,
                     wandb: bool = False, progress: bool = True) -> ExplainConfig:
    """Check the arguments of ``longrec explain`` and resolve the policies (ConfigError: one line, nothing written)."""
    from experiments.config import check_registered_env
    from experiments.preflight import check_checkpoint, env_sizes

    if users < 1:
        raise ConfigError(f"--users {users}: give at least 1 user (default: {DEFAULT_USERS})")
    if (run_folder is None) == (policy is None):
        raise ConfigError("give a RUN_FOLDER, or --policy PATH with --env ID (not both)" if run_folder
                          else "nothing to explain: give a RUN_FOLDER, or --policy PATH with --env ID")
    logs, compare_label = None, None
    if run_folder is not None:
        if env is not None or env_kwargs:
            raise ConfigError("--env / --env-kwarg go with --policy; a RUN_FOLDER brings its own environment")
        policy, label, env, env_kwargs, default_compare, logs = _from_run_folder(Path(run_folder))
        if compare is None and default_compare is not None:
            compare, compare_label = default_compare, COMPARE_LABEL
    elif env is None:
        raise ConfigError("--policy needs --env ID (e.g. --env longrec/Video-v0)")
    else:
        label = _policy_label(Path(policy))
    if compare is not None and compare_label is None:
        compare, compare_label = _resolve_compare(compare)
    env_kwargs = dict(env_kwargs or {})
    check_registered_env(env)
    sizes = env_sizes(env, env_kwargs)
    check_checkpoint(policy, "llm_policy", "--policy" if run_folder is None else "RUN_FOLDER's final policy", sizes)
    if compare is not None:
        check_checkpoint(compare, "llm_policy", "--compare", sizes)
        if Path(compare).resolve() == Path(policy).resolve():
            compare = compare_label = None
        elif compare_label == label:
            compare_label = f"{compare_label} (compare)"
    out_dir = Path(out) if out else (Path(run_folder) / "explain" if run_folder else _default_out(label))
    for parent in (out_dir, *out_dir.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {str(out_dir)!r}: {str(parent)!r} is a file, not a folder")
        if parent.exists():
            break
    return ExplainConfig(policy=str(policy), label=label, env_id=env, env_kwargs=env_kwargs, out_dir=str(out_dir),
                         compare=None if compare is None else str(compare), compare_label=compare_label, users=users, seed=seed,
                         visible_logs=logs, wandb=wandb, progress=progress, run_folder=run_folder)


def _from_run_folder(folder: Path) -> tuple[str, str, str, dict[str, Any], str | None, str | None]:
    """(policy, label, env id, env kwargs, CE-pretrained policy or None, logs.npz or None) of a run folder."""
    from experiments.run import read_json

    if not folder.is_dir():
        raise ConfigError(f"RUN_FOLDER {str(folder)!r} does not exist")
    if not (folder / "summary.json").is_file():
        hint = (" (it is a policy folder: use --policy PATH --env ID)" if (folder / "config.json").is_file() else "")
        raise ConfigError(f"RUN_FOLDER {str(folder)!r} is not a run folder: it has no summary.json{hint}")
    try:
        summary = read_json(folder / "summary.json")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"RUN_FOLDER {str(folder)!r}: summary.json cannot be read ({exc})") from None
    final = summary.get("final_checkpoint")
    candidates = [_in_run(folder, final)] if final else []
    candidates.append(folder / "checkpoints" / "final_policy")
    policy = next((p for p in candidates if (p / "config.json").is_file()), None)
    if policy is None:
        raise ConfigError(f"RUN_FOLDER {str(folder)!r} has no final LLM policy (checkpoints/final_policy; status "
                          f"{summary.get('status')!r}): finish or resume the run, or use --policy PATH --env ID")
    env_id = summary.get("env")
    env_kwargs: dict[str, Any] = {}
    if (folder / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        env_cfg = config.get("env") or {}
        env_id = env_cfg.get("id", env_id)
        env_kwargs = dict(env_cfg.get("kwargs") or {})
    if not env_id:
        raise ConfigError(f"RUN_FOLDER {str(folder)!r} names no environment (summary.json 'env' / config.yaml env.id)")
    pretrained = summary.get("pretrained_policy")
    compare = next((p for p in ([_in_run(folder, pretrained)] if pretrained else [])
                    + [folder / "checkpoints" / "pretrained" / "best"] if (p / "config.json").is_file()), None)
    logs = folder / "logs.npz"
    label = str(summary.get("agent") or folder.name)
    return (str(policy), label, env_id, env_kwargs, None if compare is None else str(compare),
            str(logs) if logs.is_file() else None)


def _in_run(folder: Path, recorded: str) -> Path:
    """A path recorded in a summary: absolute, relative to where the run was started, or to the run folder."""
    path = Path(recorded)
    return path if path.is_absolute() or path.exists() else folder / path


def _resolve_compare(path: str) -> tuple[str, str]:
    """``--compare``: a policy folder, or a run folder (its final policy); (policy folder, label)."""
    folder = Path(path)
    if not folder.exists():
        raise ConfigError(f"--compare {path!r} does not exist")
    if (folder / "summary.json").is_file():
        policy, label, *_ = _from_run_folder(folder)
        return policy, label
    return str(folder), _policy_label(folder)


def _policy_label(folder: Path) -> str:
    """A policy folder's name, with its parent's when the name alone says little (``pretrained/best``)."""
    generic = ("best", "last", "policy")
    return f"{folder.parent.name}/{folder.name}" if folder.name in generic and folder.parent.name else folder.name


def _default_out(label: str) -> Path:
    from datetime import UTC, datetime

    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)
    return Path("runs") / f"explain__{name}__{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


# --------------------------------------------------------------------------- the job


def explain(config: ExplainConfig) -> ExplainResult:
    """Record the lives, run the analyses and write ``report.html`` (see the package docstring)."""
    import torch

    from envs.registration import make_core
    from experiments.explain import report
    from experiments.explain.fingerprint import ItemFacts
    from experiments.explain.rollouts import record_lives
    from llm_policy.model import SlateModel

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest, and leaves the other cores alone
    try:
        out = Path(config.out_dir)
        figures = out / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        core = make_core(config.env_id, num_users=config.users, **dict(config.env_kwargs))
        items = ItemFacts.of(core.catalog, config.clickbait)
        pairs = [(config.compare_label, config.compare)] if config.compare else []
        pairs.append((config.label, config.policy))  # before -> after: the comparison (CE) first, then the policy
        models = {label: SlateModel.from_pretrained(path).disable_dropout().eval() for label, path in pairs}
        traces = []
        for label, model in models.items():
            bar = _bar(config, config.users, f"lives under {label}", "user")
            traces.append(record_lives(model, core, config.seed, label, progress=bar))
            _close(bar)
        numbers: dict[str, Any] = {"policies": dict(pairs), "env": config.env_id, "env_kwargs": dict(config.env_kwargs),
                                   "users": config.users, "seed": config.seed,
                                   "clickbait_rule": config.clickbait.describe(core.catalog),
                                   "clickbait_base_rate": float(items.clickbait.mean())}
        files = _fingerprints(traces, items, figures, numbers)
        files += _lives(config, core, traces, items, figures, numbers)
        files += _attributions(config, core, traces, models, items, figures, numbers)
        files += _surrogates(config, core, traces, models, figures, numbers)
        numbers["seconds"] = round(time.perf_counter() - start, 1)
        (out / "explain.json").write_text(json.dumps(_jsonable(numbers), indent=2))
        page = report.write_report(out / "report.html", config, numbers, files)
        files = [page, out / "explain.json", *files]
        url = _log_wandb(config, out, numbers, files) if config.wandb else None
        return ExplainResult(out, page, files, numbers, time.perf_counter() - start, url)
    finally:
        torch.set_num_threads(threads)


def _fingerprints(traces: list, items: Any, figures: Path, numbers: dict[str, Any]) -> list[Path]:
    """Per policy: the fingerprint and its long-term outcomes, and the same by day of the lives."""
    from experiments.explain import fingerprint

    prints = {t.label: {**fingerprint.fingerprint(t.user, t.slate_item_ids, t.clicked_item, items),
                        **_outcomes(t.lives.values)} for t in traces}
    by_day = {t.label: fingerprint.fingerprint_by_day(t.user, t.day, t.slate_item_ids, t.clicked_item, items)
              for t in traces}
    numbers["fingerprint"] = prints
    numbers["fingerprint_by_day"] = {label: {str(d): v for d, v in days.items()} for label, days in by_day.items()}
    return [fingerprint.plot_fingerprints(prints, float(items.clickbait.mean()), figures / "fingerprint.png"),
            fingerprint.plot_by_day(by_day, figures / "fingerprint_by_day.png")]


def _lives(config: ExplainConfig, core: Any, traces: list, items: Any, figures: Path,
           numbers: dict[str, Any]) -> list[Path]:
    """The hidden-state timelines of a few users under every policy."""
    from experiments.explain import timeline

    users = timeline.pick_users(traces, config.timeline_users)
    threshold = getattr(getattr(core.user_model, "user", None), "return_threshold", None)
    numbers["lives"] = timeline.life_table(traces, users)
    return [timeline.plot_life(traces, u, items, core.catalog.topic_names, figures / f"life_user{u}.png",
                               return_threshold=threshold) for u in users]


def _attributions(config: ExplainConfig, core: Any, traces: list, models: Mapping[str, Any], items: Any,
                  figures: Path, numbers: dict[str, Any]) -> list[Path]:
    """Integrated Gradients of each policy's greedy slate on a few states of the explained policy's lives."""
    from experiments.explain import attribution

    primary = traces[-1]
    rows = _attribution_rows(primary, config.attribution_states, core.history_length, core.slate_size)
    bar = _bar(config, len(rows) * len(models), "attributions", "slate")
    files, numbers["attributions"] = [], []
    for i, row in enumerate(rows):
        obs = {key: value[row] for key, value in primary.observation.items()}
        panels = []
        for label, model in models.items():
            slate = primary.slate[row] if label == primary.label else _greedy(model, obs, core.slate_size)
            panels.append((label, attribution.attribute_slate(model, obs, slate, config.attribution_steps)))
            if bar is not None:
                bar.update(1)
        user, step = int(primary.user[row]), int(primary.step[row])
        notes = {int(j): _item_note(items, int(j)) for _, a in panels for j in a.item_ids}
        files.append(attribution.plot_attributions(
            panels, obs, core.catalog.topic_names, core.catalog.topic, notes, figures / f"attribution_state{i}.png",
            title=f"user {user}, slate {step + 1} of the life under {primary.label}: greedy slate of each policy "
                  f"(slot label: topic, hidden quality q, appeal a, CB = clickbait)"))
        numbers["attributions"].append({"user": user, "step": step,
                                        "panels": {label: _attribution_numbers(a) for label, a in panels}})
    _close(bar)
    return files


def _bar(config: ExplainConfig, total: int, desc: str, unit: str) -> Any:
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()


def _outcomes(values: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Long-term outcomes of the lives (means over users, as ``agents.evaluate`` reports them)."""
    return {f"life_{name}": float(np.nanmean(values[name])) for name in ("return", "sessions", "return_rate", "length")}


def _greedy(model: Any, obs: Mapping[str, np.ndarray], slate_size: int) -> np.ndarray:
    from experiments.explain.rollouts import GreedySlateAgent

    return GreedySlateAgent(model, slate_size).act({k: np.asarray(v)[None] for k, v in obs.items()})[0]


def _attribution_rows(trace: Any, count: int, history_length: int, slate_size: int) -> list[int]:
    """Rows of ``count`` users' lives (the first users with a life), each in the middle of the life but
    late enough for a full history window."""
    full = -(-history_length // slate_size)
    rows = []
    for user in range(trace.num_users):
        life = trace.rows_of(user)
        if len(life):
            rows.append(int(life[min(len(life) - 1, max(full, len(life) // 2))]))
        if len(rows) == count:
            break
    return rows


def _item_note(items: Any, item: int) -> str:
    return f"q{items.quality[item]:+.1f} a{items.appeal[item]:.2f}{' CB' if items.clickbait[item] else ''}"


def _attribution_numbers(att: Any) -> dict[str, Any]:
    return {"item_ids": att.item_ids.tolist(), "logits": att.logits.tolist(),
            "baseline_logits": att.baseline_logits.tolist(),
            "groups": {k: v.tolist() for k, v in att.groups.items()}, "history": att.history.tolist(),
            "delta": att.delta.tolist(), "relative_delta": att.relative_delta, "steps": att.steps}


def _surrogates(config: ExplainConfig, core: Any, traces: list, models: Mapping[str, Any], figures: Path,
                numbers: dict[str, Any]) -> list[Path]:
    """Text probes from visible logs, then per policy: the surrogate, its fidelity (on held-out users) and
    the long-term return when it serves the same fresh users itself."""
    from scipy.stats import spearmanr

    from agents.evaluate import evaluate_agent
    from agents.stats import mean_ci95
    from experiments.explain import surrogate as sg

    catalog = core.catalog
    any_model = next(iter(models.values()))
    embeddings = any_model.item_embeddings[:-1].detach().cpu().numpy()
    if config.visible_logs:
        from agents.logs import load_logs

        logs = load_logs(config.visible_logs)
        probes = sg.TextProbes.from_slates(embeddings, logs.slate_item_ids, logs.clicked_item_id, logs.consumption,
                                           config.surrogate.probe_alpha)
        source = f"{config.visible_logs} ({len(logs)} logged slates)"
    else:
        probes = sg.TextProbes.from_slates(embeddings, np.concatenate([t.slate_item_ids for t in traces]),
                                           np.concatenate([t.clicked_item for t in traces]),
                                           np.concatenate([t.consumption for t in traces]), config.surrogate.probe_alpha)
        source = "the visible part of the explained lives (shown items, clicks, watch fractions)"
    out: dict[str, Any] = {
        "probe_source": source, "probe_impressions": probes.impressions, "probe_clicks": probes.clicks,
        # what the visible text scores track in the hidden truth (analysis only; never a feature)
        "probe_vs_hidden": {name: {"quality": float(spearmanr(score, catalog.quality)[0]),
                                   "appeal": float(spearmanr(score, catalog.appeal)[0])}
                            for name, score in probes.scores.items()},
        "features": dict(sg.FEATURES), "policies": {},
    }
    features = sg.SurrogateFeatures(catalog.topic, catalog.num_topics, catalog.popularity, embeddings, probes)
    fitted = {}
    for trace in traces:
        heldout = (trace.user % 4 == 3) if config.users >= 4 else np.zeros(len(trace.user), dtype=bool)
        train = ~heldout
        obs_train = {k: v[train] for k, v in trace.observation.items()}
        fit = sg.fit_surrogate(features, obs_train, trace.scores[train], config.surrogate)
        fitted[trace.label] = fit
        test = heldout if heldout.any() else train
        obs_test = {k: v[test] for k, v in trace.observation.items()}
        row: dict[str, Any] = {
            "coefficients": dict(zip(sg.FEATURES, fit.coef.tolist(), strict=True)),
            "fidelity_train": sg.fidelity(fit.scores(obs_train), trace.scores[train]),
            "fidelity_heldout": sg.fidelity(fit.scores(obs_test), trace.scores[test]),
            "tree_fidelity_heldout": sg.fidelity(fit.tree_scores(obs_test), trace.scores[test]),
            "heldout_users": "users with index % 4 == 3" if heldout.any() else "none (fewer than 4 users: training states)",
        }
        policy_return = mean_ci95(trace.lives.values["return"])
        policy_sessions = mean_ci95(trace.lives.values["sessions"])
        row["policy_return"], row["policy_return_ci95"] = policy_return
        row["policy_sessions"], row["policy_sessions_ci95"] = policy_sessions
        for kind, use_tree in (("surrogate", False), ("tree", True)):
            evaluation = evaluate_agent(sg.SurrogateAgent(fit, core.slate_size, use_tree=use_tree), config.env_id,
                                        num_users=config.users, seeds=[config.seed], env_kwargs=dict(config.env_kwargs),
                                        name=f"{kind} of {trace.label}", progress=config.progress)
            for metric in ("return", "sessions", "ctr"):
                row[f"{kind}_{metric}"] = evaluation.row[metric]
                row[f"{kind}_{metric}_ci95"] = evaluation.row[f"{metric}_ci95"]
        row["tree_rules"] = fit.rules()
        out["policies"][trace.label] = row
    numbers["surrogate"] = out
    fidelities = {label: row["fidelity_heldout"] for label, row in out["policies"].items()}
    return [sg.plot_coefficients(fitted, fidelities, figures / "surrogate_coefficients.png")]


def _jsonable(value: Any) -> Any:
    from experiments.run import to_jsonable

    return to_jsonable(value)


def _log_wandb(config: ExplainConfig, out: Path, numbers: Mapping[str, Any], files: list[Path]) -> str | None:
    """The report's figures and tables as a W&B run (job type ``explain``; offline unless logged in)."""
    from experiments.wandb_logging import WandbLogger

    logger = WandbLogger.open(name=f"explain__{out.parent.name if out.name == 'explain' else out.name}", group="explain",
                              job_type="explain", tags=[config.env_id.split("/")[-1], "explain"], run_dir=out,
                              config=asdict(config))
    labels = list(numbers["fingerprint"])
    metrics = list(numbers["fingerprint"][labels[-1]])
    logger.log_table("explain/fingerprint", ["metric", *labels],
                     [[m, *(numbers["fingerprint"][label].get(m) for label in labels)] for m in metrics])
    rows = []
    for label, row in numbers["surrogate"]["policies"].items():
        rows.append([label, row["fidelity_heldout"]["top1_agreement"], row["fidelity_heldout"]["spearman"],
                     row["policy_return"], row["surrogate_return"], row["tree_return"]])
    logger.log_table("explain/surrogate", ["policy", "top1_agreement", "spearman", "policy_return", "surrogate_return",
                                           "tree_return"], rows)
    for path in files:
        if path.suffix == ".png":
            logger.log_image(f"explain/{path.stem}", path)
    logger.set_summary({f"fingerprint/{label}/{m}": v for label in labels
                        for m, v in numbers["fingerprint"][label].items() if isinstance(v, float)})
    url = logger.url
    logger.finish()
    return url
