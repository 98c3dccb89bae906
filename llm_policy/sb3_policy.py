"""``LLMSlatePolicy``: the encoder-decoder slate model as a Stable-Baselines3 actor-critic policy.

Follows SB3's ``ActorCriticPolicy`` layering (features -> latent -> distribution
+ value head) with the pieces swapped for the language-model ones: the
"features extractor" is the text-token state encoder, the action head is the
autoregressive pointer decoder wrapped in :class:`SlateDistribution`, and the
value head reads the pooled state. Usable on any longrec env::

    from stable_baselines3 import PPO
    from llm_policy import ItemTextEncoder, LLMSlatePolicy, SlatePolicyConfig

    venv = envs.make_sb3_vec("longrec/Video-v0", num_envs=8, seed=0)
    item_emb = ItemTextEncoder().encode_catalog(envs.get_core(venv).catalog)
    model = PPO(LLMSlatePolicy, venv, policy_kwargs=dict(
        item_embeddings=item_emb, model_config=SlatePolicyConfig(d_model=64)))

or, starting from cross-entropy pretrained weights,
``policy_kwargs=dict(pretrained_path="runs/pretrain/best")``.

Persistence:

* SB3 ``model.save(path)`` / ``PPO.load(path)`` work: the item embeddings are a
  persistent buffer of the policy's state dict, and SB3 also pickles the
  ``policy_kwargs`` (so a tensor passed as ``item_embeddings`` is stored twice;
  pass a file path instead to avoid it. With ``pretrained_path``, the folder must
  still exist at load time; its weights are then overwritten by the saved ones).
* :meth:`LLMSlatePolicy.save_pretrained` / :meth:`LLMSlatePolicy.from_pretrained`
  write / read a folder with ``config.json`` + ``model.safetensors`` (the
  :class:`~llm_policy.model.SlateModel`), independent of SB3.

SB3 preprocessing: observations are used as given (ids as integers, the rollout
buffer's float32 copies are rounded back), never one-hot encoded or flattened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule

from llm_policy.config import SlatePolicyConfig
from llm_policy.distribution import SlateDistribution
from llm_policy.model import OBS_KEYS, EncodedState, SlateModel

__all__ = ["LLMSlatePolicy", "check_slate_spaces", "slate_spaces"]

# ``ActorCriticPolicy`` arguments that shape its MLP head, which this policy replaces by the slate model.
MLP_HEAD_ARGS = frozenset({"net_arch", "activation_fn", "ortho_init"})


def slate_spaces(N: int, H: int, C: int, D: int, K: int) -> tuple[spaces.Dict, spaces.MultiDiscrete]:  # noqa: N803
    """The contract's observation and action spaces for the given sizes (see ``docs/architecture.md``)."""
    obs = spaces.Dict(
        {
            "history_item_ids": spaces.Box(0, N, (H,), np.int64),
            "history_responses": spaces.Box(0, 2, (H,), np.int64),
            "history_consumption": spaces.Box(0.0, 1.0, (H,), np.float32),
            "candidate_item_ids": spaces.Box(0, N - 1, (C,), np.int64),
            "context": spaces.Box(0.0, 1.0, (D,), np.float32),
        }
    )
    return obs, spaces.MultiDiscrete([C] * K)


def check_slate_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> dict[str, int]:
    """Validate longrec spaces and return their sizes ``N, H, C, D, K``.

    Raises:
        ValueError: naming the offending space or key.
    """
    if not isinstance(observation_space, spaces.Dict):
        raise ValueError(f"LLMSlatePolicy needs a Dict observation space with keys {list(OBS_KEYS)}, got {observation_space}")
    missing = [k for k in OBS_KEYS if k not in observation_space.spaces]
    if missing:
        raise ValueError(f"observation space lacks keys {missing}; expected {list(OBS_KEYS)}")
    if not isinstance(action_space, spaces.MultiDiscrete) or action_space.nvec.ndim != 1:
        raise ValueError(f"LLMSlatePolicy needs a MultiDiscrete([C] * K) action space, got {action_space}")
    hist = observation_space["history_item_ids"]
    cand = observation_space["candidate_item_ids"]
    ctx = observation_space["context"]
    n = int(np.max(hist.high))
    c = int(cand.shape[0])
    if not np.all(action_space.nvec == c):
        raise ValueError(f"action space {action_space} must be MultiDiscrete([{c}] * K) for C={c} candidates")
    return {"N": n, "H": int(hist.shape[0]), "C": c, "D": int(ctx.shape[0]), "K": int(len(action_space.nvec))}


class LLMSlatePolicy(ActorCriticPolicy):
    """Actor-critic policy: text-token state encoder + GPT-2 pointer slate decoder + value head.

    Args:
        observation_space, action_space, lr_schedule: as for any SB3 policy.
        item_embeddings: ``(N, d_item)`` item text embeddings (tensor, array, or a ``.npy`` /
            ``.safetensors`` / ``.pt`` path), e.g. ``ItemTextEncoder().encode_catalog(catalog)``.
            Not needed with ``pretrained_path``.
        model_config: :class:`SlatePolicyConfig` (or a dict of its fields). Ignored with ``pretrained_path``.
        pretrained_path: a folder written by ``save_pretrained`` (or by CE pretraining) to start from;
            its dropout and item-id dropout are switched off (:meth:`SlateModel.disable_dropout`).
        seed: seeds a private ``torch.Generator`` for slate sampling; ``None`` uses torch's global
            generator (seeded by SB3's ``seed=``).
        use_kv_cache: decode with the key/value cache.
        **kwargs: ``optimizer_class``, ``optimizer_kwargs`` and other ``ActorCriticPolicy`` arguments.
            The MLP-head arguments ``net_arch``, ``activation_fn`` and ``ortho_init`` are refused (the
            network is set by ``model_config``), and so is ``use_sde=True``.

    Raises:
        ValueError: for a refused argument, spaces that are not longrec's, or sizes that disagree.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        item_embeddings: Any = None,
        model_config: SlatePolicyConfig | Mapping[str, Any] | None = None,
        pretrained_path: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        use_kv_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        self.sizes = check_slate_spaces(observation_space, action_space)
        refused = sorted(MLP_HEAD_ARGS & kwargs.keys())
        if refused:
            raise ValueError(
                f"LLMSlatePolicy has no MLP head: {refused} would be ignored; set the network with model_config"
            )
        if kwargs.get("use_sde"):
            raise ValueError("LLMSlatePolicy samples slates from its decoder: use_sde=True is not supported")
        if pretrained_path is None and item_embeddings is None:
            raise ValueError("LLMSlatePolicy needs item_embeddings (N, d) or pretrained_path=<save_pretrained folder>")
        if isinstance(model_config, Mapping):
            model_config = SlatePolicyConfig.from_dict(dict(model_config))
        self.item_embeddings_arg = item_embeddings
        self.model_config = model_config or SlatePolicyConfig()
        self.pretrained_path = None if pretrained_path is None else str(pretrained_path)
        self.seed = seed
        self.use_kv_cache = use_kv_cache
        self._generators: dict[str, torch.Generator] = {}
        super().__init__(observation_space, action_space, lr_schedule, ortho_init=False, **kwargs)

    # ------------------------------------------------------------------ construction

    def _build(self, lr_schedule: Schedule) -> None:
        sizes = self.sizes
        if self.pretrained_path is not None:
            # pretraining's dropout would make rollouts (eval mode) and PPO updates (train mode) disagree
            self.model = SlateModel.from_pretrained(self.pretrained_path).disable_dropout()
            self.model_config = self.model.config
        else:
            self.model = SlateModel(self.model_config, self.item_embeddings_arg, sizes["D"])
        self.model.obs_sizes = dict(sizes)
        if self.model.num_items != sizes["N"]:
            raise ValueError(
                f"item embeddings cover {self.model.num_items} items but the env's catalog has N={sizes['N']}"
            )
        if self.model.context_dim != sizes["D"]:
            raise ValueError(f"model context_dim={self.model.context_dim} but the env's context has D={sizes['D']}")
        if sizes["K"] > self.model_config.max_slate_size:
            raise ValueError(f"slate size K={sizes['K']} exceeds model_config.max_slate_size={self.model_config.max_slate_size}")
        self.action_dist = SlateDistribution(sizes["K"], use_cache=self.use_kv_cache)
        params = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = self.optimizer_class(params, lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in MLP_HEAD_ARGS:
            data.pop(key, None)
        data.update(
            item_embeddings=None if self.pretrained_path is not None else self.model.item_embeddings[:-1].cpu(),
            model_config=asdict(self.model_config),
            pretrained_path=self.pretrained_path,
            seed=self.seed,
            use_kv_cache=self.use_kv_cache,
        )
        return data

    # ------------------------------------------------------------------ randomness

    def set_seed(self, seed: int | None) -> None:
        """Reseed the private sampling generator (``None``: use torch's global generator)."""
        self.seed = seed
        self._generators.clear()

    def _generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(self.device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=self.device).manual_seed(int(self.seed))
        return self._generators[key]

    # ------------------------------------------------------------------ SB3 API

    def extract_features(self, obs: PyTorchObs, features_extractor: Any = None) -> EncodedState:  # type: ignore[override]
        """Encode raw observations (no one-hot / flattening: ids stay ids)."""
        if not isinstance(obs, Mapping):
            raise ValueError(f"LLMSlatePolicy expects dict observations with keys {list(OBS_KEYS)}, got {type(obs).__name__}")
        return self.model.encode(obs)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = self.extract_features(obs)
        values = self.model.value(state).unsqueeze(-1)
        out = self.model.generate(
            state, self.sizes["K"], greedy=deterministic, generator=self._generator(), use_cache=self.use_kv_cache
        )
        return out.slate, values, out.log_prob

    def evaluate_actions(self, obs: PyTorchObs, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        state = self.extract_features(obs)
        actions = actions.reshape(-1, self.sizes["K"])
        out = self.model.score_slate(state, actions.round().long() if actions.is_floating_point() else actions)
        return self.model.value(state).unsqueeze(-1), out.log_prob, out.entropy.sum(dim=1)

    def get_distribution(self, obs: PyTorchObs) -> SlateDistribution:
        return self.action_dist.proba_distribution(self.model, self.extract_features(obs), self._generator())

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)

    def predict_values(self, obs: PyTorchObs) -> torch.Tensor:
        return self.model.value(self.extract_features(obs)).unsqueeze(-1)

    # ------------------------------------------------------------------ another catalog

    def set_catalog(self, item_embeddings: Any, catalog: str | None = None, observation_space: spaces.Space | None = None,
                    action_space: spaces.Space | None = None) -> LLMSlatePolicy:
        """Serve another catalog with the same weights (:meth:`SlateModel.set_catalog`): ``item_embeddings``
        ``(N', d)`` of the new items' texts, ``catalog`` its fingerprint (``Catalog.fingerprint``); the spaces
        become those of an env with that catalog (pass the env's own spaces when its history, candidates or
        slate size differ too). Returns ``self``."""
        self.model.set_catalog(item_embeddings, catalog)
        if observation_space is None or action_space is None:
            sizes = {**self.sizes, "N": self.model.num_items}
            default_obs, default_act = slate_spaces(**sizes)
            observation_space, action_space = observation_space or default_obs, action_space or default_act
        sizes = check_slate_spaces(observation_space, action_space)
        if sizes["N"] != self.model.num_items or sizes["D"] != self.model.context_dim:
            raise ValueError(f"the spaces give N={sizes['N']}, D={sizes['D']}; the catalog has {self.model.num_items} "
                             f"items and the model context D={self.model.context_dim}")
        if sizes["K"] > self.model_config.max_slate_size:
            raise ValueError(f"slate size K={sizes['K']} exceeds model_config.max_slate_size={self.model_config.max_slate_size}")
        self.observation_space, self.action_space, self.sizes = observation_space, action_space, sizes
        self.model.obs_sizes = dict(sizes)
        self.action_dist = SlateDistribution(sizes["K"], use_cache=self.use_kv_cache)
        return self

    # ------------------------------------------------------------------ save / load folders

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write the model (config.json + model.safetensors) to ``directory``."""
        return self.model.save_pretrained(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        env: gym.Env | Any | None = None,
        *,
        observation_space: spaces.Space | None = None,
        action_space: spaces.Space | None = None,
        learning_rate: float = 3e-4,
        **kwargs: Any,
    ) -> LLMSlatePolicy:
        """Build a policy from a ``save_pretrained`` folder, for ``env``'s spaces, the given spaces, or
        (with neither) the observation sizes recorded in the folder by ``save_pretrained`` / pretraining."""
        if env is not None:
            observation_space = observation_space or env.observation_space
            action_space = action_space or env.action_space
        if observation_space is None or action_space is None:
            import json

            meta = json.loads((Path(directory) / "config.json").read_text())
            sizes = meta.get("obs_sizes")
            if not sizes:
                raise ValueError(f"{directory} records no observation sizes: pass env= or observation_space= and action_space=")
            obs_default, act_default = slate_spaces(**{k: int(sizes[k]) for k in ("N", "H", "C", "D", "K")})
            observation_space = observation_space or obs_default
            action_space = action_space or act_default
        return cls(observation_space, action_space, lambda _: learning_rate, pretrained_path=directory, **kwargs)
