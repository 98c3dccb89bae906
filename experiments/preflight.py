"""Checks that need files and environments, run before any work and before any run folder exists.

``experiments.config`` checks a config's keys, types and ranges; this module checks what the
config *points at*: the environment it builds (``env.id`` with ``env.kwargs``), the runs folder,
the pretraining data (a logs ``.npz`` or a MovieLens folder), the text encoder, and every
checkpoint a job would load (``init_from``, ``eval.checkpoint``, ``resume``): that it exists,
can be read, is the kind the agent needs, and fits the environment's spaces. Each problem is
one :class:`~experiments.config.ConfigError` naming the key, the value and what would be valid;
the CLI prints it as one line and exits with code 2.

    check_files(job, cfg)            # everything above, for a job about to run
    checkpoint_kind(path)            # "llm_policy" | "sb3_zip" | "slateq" | "ppo_resume" | "run"
    resolve_checkpoint(path, agent)  # a run folder -> its final policy, checked against the agent
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.registry import agent_info
from experiments.config import ConfigError, ExperimentConfig

KIND_NAMES = {
    "llm_policy": "an LLM policy folder (config.json + model.safetensors, from save_pretrained or pretraining)",
    "sb3_zip": "an SB3 PPO .zip (agent ppo_mlp)",
    "slateq": "a SlateQ .pt (agent slateq)",
    "ppo_resume": "a PPO training checkpoint (last.pt, for resume)",
    "run": "a run folder (summary.json)",
}


def check_files(job: str, cfg: ExperimentConfig) -> None:
    """Raise ConfigError for the first thing ``job`` would fail on later: env, runs folder, data,
    text encoder, checkpoints. Cheap: builds one single-user env and reads file headers."""
    check_runs_dir(cfg.logging.runs_dir)
    movielens_pretraining = cfg.data.source == "movielens" and (job == "pretrain" or (
        job in ("train", "quickstart") and agent_info(cfg.agent).from_pretrained and cfg.init_from is None))
    sizes = None if job == "pretrain" and movielens_pretraining else env_sizes(cfg.env.id, cfg.env.kwargs)
    if job in ("pretrain", "train", "quickstart"):
        _check_pretraining_inputs(job, cfg, movielens_pretraining)
    if job in ("train", "quickstart") and cfg.init_from is not None:
        check_checkpoint(cfg.init_from, "llm_policy", "init_from", sizes)
    if job == "eval" and cfg.eval.checkpoint is not None:
        resolve_checkpoint(cfg.eval.checkpoint, cfg.agent, sizes)


def _check_pretraining_inputs(job: str, cfg: ExperimentConfig, movielens: bool) -> None:
    pretrains = job == "pretrain" or (agent_info(cfg.agent).from_pretrained and cfg.init_from is None)
    if pretrains and movielens:
        check_movielens_folder(cfg.data.path)
    elif pretrains and cfg.data.path:
        check_logs_file(cfg.data.path)
    uses_text = pretrains or cfg.agent == "ppo_scratch"
    if uses_text and not movielens:
        check_text_encoder(cfg.text.encoder)


# --------------------------------------------------------------------------- the pieces


def check_runs_dir(runs_dir: str | Path) -> None:
    """``logging.runs_dir`` must be a folder or not exist yet (it is made), never a file."""
    path = Path(runs_dir)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"config key 'logging.runs_dir' (--runs-dir) must be a folder; {str(parent)!r} is a file")
        if parent.exists():
            return


def env_sizes(env_id: str, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Build ``env_id`` with ``env_kwargs`` once (one user) and return its sizes ``N, H, C, D, K`` and its
    catalog's fingerprint (``catalog``)."""
    import gymnasium as gym

    import envs  # noqa: F401 - registers longrec/*
    from llm_policy.sb3_policy import check_slate_spaces

    try:
        env = gym.make(env_id, disable_env_checker=True, **dict(env_kwargs))
    except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        raise ConfigError(f"config key 'env.kwargs' does not build {env_id}: {_one_line(exc)}") from None
    try:
        return {**check_slate_spaces(env.observation_space, env.action_space),
                "catalog": envs.get_core(env).catalog.fingerprint()}
    finally:
        env.close()


def check_logs_file(path: str | Path) -> None:
    """``data.path`` of simulator logs: an ``.npz`` written by ``generate_logs`` with every array."""
    import numpy as np

    from agents.logs import ARRAY_KEYS

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config key 'data.path': logs file {str(file)!r} does not exist "
                          "(a .npz written by `longrec pretrain` as <run>/logs.npz, or null to generate logs)")
    try:
        with np.load(file, allow_pickle=False) as archive:
            names = set(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"config key 'data.path': {str(file)!r} is not a readable .npz (truncated or not a "
                          f"longrec log: {_one_line(exc)})") from None
    missing = [key for key in (*ARRAY_KEYS, "meta") if key not in names]
    if missing:
        raise ConfigError(f"config key 'data.path': {str(file)!r} is not a longrec log: it lacks {', '.join(missing)}")


def check_movielens_folder(path: str | None) -> None:
    """``data.path`` of MovieLens pretraining: a folder the loader reads completely (under a second)."""
    from envs.movielens import load_movielens

    try:
        load_movielens(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"config key 'data.path': {_one_line(exc)}") from None


def check_text_encoder(name: str | None) -> None:
    """``text.encoder``: ``minilm`` / null (bundled), ``tiny``, or a model folder holding ``config.json``."""
    if name == "tiny":
        return
    if name in (None, "minilm"):
        from llm_policy.text_encoder import default_model_path

        try:
            default_model_path()
        except FileNotFoundError as exc:
            raise ConfigError(f"config key 'text.encoder': {_one_line(exc)} (or text.encoder=tiny)") from None
        return
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"config key 'text.encoder': {name!r} is not a model folder (no config.json there); "
                          "valid: minilm (bundled), tiny (a random tiny BERT, for tests), or a local "
                          "transformers model folder")


def checkpoint_kind(path: str | Path) -> str:
    """What ``path`` holds (a key of :data:`KIND_NAMES`); ConfigError-free: ValueError when unknown."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if path.is_dir():
        if (path / "summary.json").is_file():
            return "run"
        if (path / "config.json").is_file() or (path / "model.safetensors").is_file():
            return "llm_policy"
        if (path / "last.pt").is_file():
            return "ppo_resume"
        raise ValueError(f"{str(path)!r} is a folder but neither a run folder (summary.json) nor a policy folder "
                         "(config.json + model.safetensors)")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
        if "policy.pth" in names and "data" in names:
            return "sb3_zip"
        payload = _torch_load(path)
        fmt = payload.get("format") if isinstance(payload, dict) else None
        if fmt == "longrec-slateq-v1":
            return "slateq"
        if fmt == "longrec-checkpoint-v1":
            return "ppo_resume"
        raise ValueError(f"{str(path)!r} is a file of no longrec kind (format {fmt!r})")
    raise ValueError(f"{str(path)!r} is not a checkpoint (neither a folder nor a zip / torch file; truncated?)")


def resolve_checkpoint(path: str | Path, agent: str, sizes: Mapping[str, Any] | None = None,
                       key: str = "eval.checkpoint") -> str:
    """The policy to evaluate as ``agent``: ``path`` itself, or a run folder's final policy; checked
    to be the kind ``agent`` loads, of the same agent when the run folder says, and to fit ``sizes``."""
    needed = agent_info(agent).checkpoint
    if needed is None:
        raise ConfigError(f"agent {agent} has no checkpoint to load; drop {key}")
    kind = _kind_or_error(path, key)
    if kind == "run":
        summary = json.loads((Path(path) / "summary.json").read_text())
        trained = summary.get("agent")
        if trained != agent and not (agent == "pctr_greedy" and summary.get("pretrained_policy")):
            raise ConfigError(f"config key {key!r}: run folder {str(path)!r} trained agent {trained}, not {agent}; "
                              f"evaluate it with agent={trained}")
        final = summary.get("pretrained_policy") if agent == "pctr_greedy" else summary.get("final_checkpoint")
        if not final:
            raise ConfigError(f"config key {key!r}: run folder {str(path)!r} has no final policy "
                              f"(status {summary.get('status')!r}); resume it or give a checkpoint path")
        path = Path(final) if Path(final).is_absolute() or Path(final).exists() else Path(path) / final
    check_checkpoint(path, needed, key, sizes, agent=agent)
    return str(path)


def check_checkpoint(path: str | Path, needed: str, key: str, sizes: Mapping[str, Any] | None = None,
                     agent: str | None = None) -> None:
    """``path`` must hold a readable checkpoint of kind ``needed`` that fits the env ``sizes``."""
    kind = _kind_or_error(path, key)
    if kind != needed:
        who = f"agent {agent} loads" if agent else f"{key} must be"
        raise ConfigError(f"config key {key!r}: {str(path)!r} is {KIND_NAMES[kind]}, but {who} {KIND_NAMES[needed]}")
    saved = _saved_sizes(Path(path), kind, key)
    if sizes is None or saved is None:
        return
    fixed = ("N", "H", "C", "D", "K") if kind == "sb3_zip" else ("N", "D")
    wrong = [f"{k}={saved[k]} (env: {sizes[k]})" for k in fixed if k in saved and int(saved[k]) != int(sizes[k])]
    if kind == "llm_policy" and "max_slate_size" in saved and sizes["K"] > saved["max_slate_size"]:
        wrong.append(f"max_slate_size={saved['max_slate_size']} < the env's slate size K={sizes['K']}")
    if wrong:
        raise ConfigError(f"config key {key!r}: {str(path)!r} does not fit the environment: {', '.join(wrong)} "
                          "(N items, H history, C candidates, D context, K slate size); use env.id / env.kwargs "
                          "of the run that saved it")
    if saved.get("catalog") and sizes.get("catalog") and saved["catalog"] != sizes["catalog"]:
        raise ConfigError(f"config key {key!r}: {str(path)!r} learned the catalog {saved['catalog']}, but env.id / "
                          f"env.kwargs give the catalog {sizes['catalog']} (another catalog_seed or preset): its item "
                          "ids would name other items; use the env settings of the run that saved it "
                          "(benchmarks/transfer.py serves a policy another catalog on purpose)")


# --------------------------------------------------------------------------- helpers


def _kind_or_error(path: str | Path, key: str) -> str:
    try:
        return checkpoint_kind(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"config key {key!r}: {_one_line(exc)}") from None


def _saved_sizes(path: Path, kind: str, key: str) -> dict[str, Any] | None:
    """The sizes a checkpoint was saved for (None when it does not record them)."""
    if kind == "llm_policy":
        return _llm_policy_sizes(path, key)
    if kind == "sb3_zip":
        from stable_baselines3.common.save_util import load_from_zip_file

        from llm_policy.sb3_policy import check_slate_spaces

        try:
            data, _, _ = load_from_zip_file(path, load_data=True, device="cpu")
            return {**check_slate_spaces(data["observation_space"], data["action_space"]), "catalog": data.get("catalog")}
        except Exception as exc:  # noqa: BLE001 - any unreadable zip gets the same message
            raise ConfigError(f"config key {key!r}: cannot read {str(path)!r} ({_one_line(exc)})") from None
    if kind == "slateq":
        payload = _torch_load(path)
        return {"N": int(payload["num_items"]), "D": int(payload["context_dim"]), "catalog": payload.get("catalog")}
    return None


def _llm_policy_sizes(path: Path, key: str) -> dict[str, Any] | None:
    from safetensors import safe_open

    config, weights = path / "config.json", path / "model.safetensors"
    missing = [p.name for p in (config, weights) if not p.is_file()]
    if missing:
        raise ConfigError(f"config key {key!r}: policy folder {str(path)!r} lacks {', '.join(missing)}")
    try:
        meta = json.loads(config.read_text())
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # noqa: BLE001 - json, safetensors header, I/O: one message
        raise ConfigError(f"config key {key!r}: policy folder {str(path)!r} is corrupt ({_one_line(exc)})") from None
    if not isinstance(meta, dict) or "model_config" not in meta or "num_items" not in meta:
        raise ConfigError(f"config key {key!r}: {str(config)!r} is not a slate-policy config (no model_config)")
    sizes = {k: int(v) for k, v in (meta.get("obs_sizes") or {}).items()}
    sizes.setdefault("N", int(meta["num_items"]))
    sizes.setdefault("D", int(meta.get("context_dim", 0)))
    slate = (meta.get("model_config") or {}).get("max_slate_size")
    if slate is not None:
        sizes["max_slate_size"] = int(slate)
    if meta.get("catalog"):
        sizes["catalog"] = meta["catalog"]
    return sizes


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files: one message
        raise ValueError(f"{str(path)!r} cannot be read as a torch file ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
