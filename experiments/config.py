"""Typed experiment configuration: frozen dataclasses, YAML files and dotted overrides.

The layout follows CleanRL's ``Args`` dataclasses (one typed field with a one-line
docstring under it per hyperparameter), grouped into sections the way Hydra /
OmegaConf structured configs are, but with no dependency beyond PyYAML:

* a YAML file from ``experiments/configs/`` (``extends: other`` inherits one),
* then ``key=value`` overrides with dotted keys (``ppo.learning_rate=1e-4``),
  whose values are parsed with YAML scalar rules,
* then every value is checked against the dataclass field type, its ``Literal``
  choices and its range (``param(..., ge=...)``, kept in the field's metadata).

The training sections are the libraries' own config classes, so each knob has one name and
one default: ``policy`` = ``llm_policy.SlatePolicyConfig``, ``pretrain`` =
``llm_policy.PretrainConfig``, ``ppo`` = ``agents.ppo.PPOConfig``, ``kl`` =
``agents.kl.KLConfig``, ``slateq`` = ``agents.slateq.SlateQConfig``. The sections defined
here (``env``, ``data``, ``text``, ``eval``, ``logging`` and the top-level keys) hold what a
run needs around them: seed, device, environment, data, folders.

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
(a ``ValueError``) naming the key and the valid choices, before any work starts.

Adding a hyperparameter is one line (plus its docstring) in the class that uses it::

    warmup_steps: int = param(0, ge=0)
    \"\"\"linear learning-rate warm-up, in environment steps\"\"\"
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agents.config import KLConfig, MovieLensPretrainConfig, PPOConfig, SlateQConfig
from agents.registry import AGENTS
from llm_policy.config import PretrainConfig, SlatePolicyConfig
from llm_policy.config_fields import ConfigError, bounds_error, param

__all__ = ["AGENTS", "ConfigError", "ExperimentConfig", "param", "load_config", "from_dict", "describe_keys",
           "field_docs"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

AgentName = Literal[AGENTS]  # type: ignore[valid-type]  # the names of agents.registry, in table order
"""Agent names understood by ``agent=`` and ``eval.baselines`` (``agents.registry.AGENTS``)."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class EnvConfig:
    """Which simulator preset to run and how many users to simulate at once."""

    id: str = "longrec/Video-v0"
    """registered environment id (``longrec envs`` lists them)"""
    num_envs: int = param(64, ge=1)
    """users simulated in parallel during training (batch of the vector env)"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments for the preset, e.g. ``env.kwargs.horizon_days=10``"""


@dataclass(frozen=True)
class DataConfig:
    """Where pretraining data comes from: simulator logs or a real dataset."""

    source: Literal["simulator", "movielens"] = "simulator"
    """``simulator``: logs of a behaviour policy on ``env.id``; ``movielens``: real ratings"""
    path: str | None = None
    """folder in ml-latest-small format (``movielens``), or an existing ``.npz`` log file"""
    num_users: int = param(2000, ge=1)
    """users simulated by the behaviour policy when generating logs"""
    behaviour: str = "logger"
    """behaviour policy that writes the logs (``agents.logs.generate_logs``): ``logger``, the production click
    model on visible features (the default: what a real system logs), or ``myopic``, ``random``, and the
    privileged ``noisy_quality`` / ``quality_aware`` (they read hidden quality: references only)"""


@dataclass(frozen=True)
class TextConfig:
    """The item-text encoder whose embeddings the LLM policy reads (``llm_policy.ItemTextEncoder``)."""

    encoder: str = "minilm"
    """``minilm`` (bundled all-MiniLM-L6-v2), ``tiny`` (random, tests), a model folder or a hub id"""
    cache_dir: str | None = None
    """where catalog embeddings are cached (None: ``$LONGREC_CACHE/item_embeddings``, ``~/.cache/longrec``)"""


@dataclass(frozen=True)
class EvalConfig:
    """Long-term evaluation on fresh users."""

    num_users: int = param(2000, ge=1)
    """fresh users per evaluation seed"""
    seeds: tuple[int, ...] = (1000,)
    """evaluation seeds (kept apart from the training seed)"""
    baselines: tuple[AgentName, ...] = ("random", "myopic", "pctr_greedy", "oracle")
    """agents evaluated next to the trained one, in the same run"""
    checkpoint: str | None = None
    """policy checkpoint to evaluate (``longrec eval``); None = the run's own final policy"""


@dataclass(frozen=True)
class LoggingConfig:
    """Local run folder and Weights & Biases."""

    runs_dir: str = "runs"
    """parent folder of run folders"""
    wandb: bool = True
    """log to Weights & Biases (offline unless logged in); false turns W&B off"""
    project: str = "longrec"
    """W&B project"""
    entity: str | None = None
    """W&B entity (user or team); None = the default entity"""
    mode: Literal["auto", "offline", "online"] = "auto"
    """``auto``: online when logged in or WANDB_MODE says so, else offline"""
    group: str | None = None
    """W&B group (None: ``<env>__<experiment>``, so seeds of one agent aggregate; sweeps use the sweep name)"""
    tags: tuple[str, ...] = ()
    """extra W&B tags (env and agent are always added)"""
    log_checkpoint: bool = True
    """upload the final checkpoint as a W&B artifact"""
    progress: bool = True
    """progress bars (``--quiet`` turns them off)"""


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: what to train/evaluate, on which env, with which seed and device.

    The training sections are the libraries' own config classes (one definition per knob):
    ``policy`` = ``llm_policy.SlatePolicyConfig``, ``pretrain`` = ``llm_policy.PretrainConfig``,
    ``ppo`` = ``agents.ppo.PPOConfig``, ``kl`` = ``agents.kl.KLConfig``, ``slateq`` =
    ``agents.slateq.SlateQConfig``, ``movielens`` = ``agents.movielens_pretrain.MovieLensPretrainConfig``
    (next-item pretraining with ``data.source=movielens``). A job refuses a non-default key it would not read
    (``experiments.jobs.check_config``).
    """

    name: str = ""
    """experiment name, part of the run folder name (default: the agent)"""
    seed: int = param(0, ge=0)
    """seed of every random generator of the run"""
    seeds: tuple[int, ...] = ()
    """``longrec train``: launch one run per training seed (like ``--seeds 0-4``) instead of one with ``seed``"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """torch device; ``auto`` uses CUDA when present"""
    torch_threads: int = param(0, ge=0)
    """torch CPU threads (0 = torch's default)"""
    agent: AgentName = "ce_ppo_kl"
    """agent to train / evaluate (``agents.registry``)"""
    total_timesteps: int = param(200_000, ge=1)
    """environment steps (user-steps summed over the batch) the agent trains for (PPO or SlateQ)"""
    init_from: str | None = None
    """pretrained policy folder (``save_pretrained``) to start from instead of this run's pretraining"""
    resume: str | None = None
    """``longrec train``: continue this stopped run (its folder, or a checkpoint inside it) in place, with its own
    config; the same as ``longrec train --resume RUN``"""
    env: EnvConfig = field(default_factory=EnvConfig)
    """simulator"""
    data: DataConfig = field(default_factory=DataConfig)
    """pretraining data"""
    text: TextConfig = field(default_factory=TextConfig)
    """item-text encoder"""
    policy: SlatePolicyConfig = field(default_factory=SlatePolicyConfig)
    """LLM slate policy (``llm_policy.SlatePolicyConfig``)"""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """cross-entropy pretraining (``llm_policy.PretrainConfig``)"""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO fine-tuning (``agents.ppo.PPOConfig``)"""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty to the pretrained policy, agent ``ce_ppo_kl`` (``agents.kl.KLConfig``)"""
    slateq: SlateQConfig = field(default_factory=SlateQConfig)
    """SlateQ baseline (``agents.slateq.SlateQConfig``)"""
    movielens: MovieLensPretrainConfig = field(default_factory=MovieLensPretrainConfig)
    """next-item pretraining on MovieLens (``data.source=movielens``): protocol, item features, model, training"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """evaluation"""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """run folder and W&B"""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), as written to ``config.yaml``."""
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Flat dict with dotted keys (``ppo.learning_rate``), as W&B sweeps name parameters."""
        return flatten(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def override(self, *overrides: str) -> ExperimentConfig:
        """A copy with ``key=value`` overrides applied and validated."""
        data = self.to_dict()
        apply_overrides(data, overrides)
        return from_dict(ExperimentConfig, data)


# --------------------------------------------------------------------------- loading


def available_configs() -> list[str]:
    """Names of the YAML configs shipped in ``experiments/configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """``video`` -> ``experiments/configs/video.yaml``; an existing path is returned as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    shipped = CONFIG_DIR / f"{path.stem if path.suffix else name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = available_configs()
    hint = _did_you_mean(str(name_or_path), names)
    raise ConfigError(f"config {str(name_or_path)!r} not found (neither a file nor a shipped config){hint}; "
                      f"shipped configs: {', '.join(names)}")


def read_config_file(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Nested dict of a YAML config, with ``extends: base`` resolved (base first, then this file)."""
    path = resolve_config_path(name_or_path)
    if path in _seen:
        raise ConfigError(f"config {path} extends itself (cycle: {' -> '.join(map(str, _seen + (path,)))})")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    base_path = Path(base) if Path(base).is_absolute() or Path(base).exists() else path.parent / str(base)
    parent = read_config_file(base_path if base_path.suffix else base, _seen + (path,))
    return deep_merge(parent, data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from a YAML error: what is wrong and where (``line 3, column 1``)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def load_config(name_or_path: str | Path | None = "default", overrides: Sequence[str] = (),
                check_env_id: bool = False) -> ExperimentConfig:
    """Load a shipped config (or a YAML path), apply ``key=value`` overrides, validate.

    With ``check_env_id`` the environment id is checked against gymnasium's registry
    (after ``import envs``), so that a typo fails before any work starts.
    """
    data = read_config_file(name_or_path) if name_or_path is not None else {}
    apply_overrides(data, overrides)
    cfg = from_dict(ExperimentConfig, data)
    if check_env_id:
        check_registered_env(cfg.env.id)
    return cfg


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(cfg.to_yaml())


def check_registered_env(env_id: str) -> None:
    """Raise ConfigError unless ``env_id`` is registered once ``envs`` is imported."""
    import envs  # registers the presets

    ids = envs.registered_ids()
    if env_id in ids:
        return
    raise ConfigError(f"config key 'env.id': unknown environment {env_id!r}{_did_you_mean(env_id, ids)}; "
                      f"registered: {', '.join(ids)}")


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, Any]:
    """``"ppo.learning_rate=1e-4"`` -> ``("ppo.learning_rate", 1e-4)``, value by YAML scalar rules."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. ppo.learning_rate=1e-4)")
    if key.startswith("-"):
        raise ConfigError(f"override {text!r}: write key=value without leading dashes")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""  # `name=` is the empty string; `x=null` is None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML ({exc.problem})") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict in place (sections are created as needed)."""
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys. Empty dicts are kept as values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- validation


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build (and validate) a config dataclass from a nested dict.

    Keys missing from ``data`` keep their values in ``base`` (default: ``cls()``); a nested
    section starts from ``base``'s value of that field, so a section whose default differs from
    its class's defaults (e.g. ``movielens.train.model``) keeps the default of the section.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r} must be a section (mapping), "
                          f"got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            full = f"{prefix}{key}"
            hint = _did_you_mean(str(key), list(fields), prefix) or _leaf_hint(str(key), cls)
            raise ConfigError(f"unknown config key {full!r}{hint}; valid keys"
                              f"{' in ' + repr(prefix.rstrip('.')) if prefix else ''}: {', '.join(fields)}")
    base = cls() if base is None else base
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}", getattr(base, name))
        problem = bounds_error(kwargs[name], fields[name].metadata.get("bounds", {}))
        if problem is not None:
            raise ConfigError(f"config key {prefix + name!r} {problem}; got {kwargs[name]!r}")
    try:
        return dataclasses.replace(base, **kwargs)
    except ValueError as exc:  # a check across fields in the class's __post_init__
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'!r}: {exc}") from None


def _coerce(value: Any, tp: Any, key: str, default: Any = None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key + ".", default)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if (value is None or value == "") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        allowed = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"config key {key!r} expects {allowed}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value in args:
            return value
        hint = _did_you_mean(str(value), [str(a) for a in args])
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(repr, args))}; "
                          f"got {value!r}{hint}")
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            if value is None:
                value = []
            else:
                value = [value]  # a scalar where a list is expected: a list of one
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects a bool (true/false), got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects an int, got {value!r} (bool)")
        if isinstance(value, int):
            return value
        number = _as_float(value)
        if number is not None and math.isfinite(number) and number == int(number):
            return int(number)  # 1e5 or "1e5" (YAML 1.1 reads it as a string)
        raise ConfigError(f"config key {key!r} expects an int, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} expects a float, got {value!r} (bool)")
        number = _as_float(value)
        if number is None:
            raise ConfigError(f"config key {key!r} expects a float, got {value!r} ({type(value).__name__})")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} expects a string, got {value!r} ({type(value).__name__})")
    raise TypeError(f"config field {key!r} has an unsupported type {tp!r}")


def _as_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _leaf_hint(key: str, cls: type) -> str:
    """``wandb`` at the top level -> "did you mean 'logging.wandb'?" (a key of a sub-section)."""
    leaves = [row[0] for row in describe_keys(cls)]
    matches = [leaf for leaf in leaves if leaf.rsplit(".", 1)[-1] == key]
    return f" (did you mean {' or '.join(map(repr, matches))}?)" if matches else ""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _did_you_mean(word: str, choices: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- documentation


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings under each field of a config dataclass (read from the source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def describe_keys(cls: type = ExperimentConfig, prefix: str = "", default: Any = None
                  ) -> list[tuple[str, str, Any, str]]:
    """Rows ``(dotted key, type, default, docstring)`` of every leaf config key (``default``: ``cls()``)."""
    rows = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    default = cls() if default is None else default
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_keys(tp, f"{prefix}{f.name}.", getattr(default, f.name)))
            continue
        tname = str(tp).replace("typing.", "") if typing.get_origin(tp) else _type_name(tp)
        rows.append((f"{prefix}{f.name}", tname, _plain(getattr(default, f.name)), docs.get(f.name, "")))
    return rows
