"""State encoder: the "LLM encoder as state representation".

A transformer encoder (BERT, Devlin et al. 2019) reads the user's history as a
sequence of *item tokens*, in the spirit of BERT4Rec (Sun et al. 2019) and
text-based sequential recommenders such as UniSRec (Hou et al. 2022), where an
item token is built from the item's text embedding rather than an id:

    token_t = W_item e_text(item_t) + E_resp[response_t] + w_cons * consumption_t
    context = W_ctx context + e_ctx                                 (token 0)

Positions are added by the transformer's own position embeddings (the model
is fed ``inputs_embeds``). Two modes (``SlatePolicyConfig.encoder``):

* ``"fresh"``: a new small ``BertModel`` of the configured size;
* ``"pretrained"``: the layers of a pretrained Hugging Face encoder (by default
  all-MiniLM-L6-v2), reused through ``inputs_embeds``: fully fine-tuned, frozen
  (``train_pretrained_encoder=False``), or adapted with LoRA (Hu et al. 2021;
  ``encoder_lora_rank > 0``, via ``peft``), the usual choice for a large encoder on a GPU.

Padding history slots (item id ``N`` or response 0) are masked out of the
attention; the context token is always visible, so a user with no history
still has a state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llm_policy.config import SlatePolicyConfig

__all__ = ["StateEncoder", "build_encoder_transformer", "running_mean_pool"]


def running_mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, d)`` running means: row t = mean of ``states[:, s]`` over valid ``s <= t``.

    The last row is the mean over all valid tokens (``"mean"`` pooling); a row whose prefix has no
    valid token is 0 (the context token at position 0 is always valid, so that never happens here).
    """
    m = mask.unsqueeze(-1).to(states.dtype)
    return torch.cumsum(states * m, dim=1) / torch.cumsum(m, dim=1).clamp_min(1.0)


def build_encoder_transformer(
    config: SlatePolicyConfig,
    hf_config: dict[str, Any] | None = None,
) -> nn.Module:
    """The Hugging Face encoder that runs over the history tokens.

    Args:
        config: policy config.
        hf_config: a saved Hugging Face config dict (from :meth:`StateEncoder.hf_config_dict`).
            When given, the architecture is rebuilt from it with random weights (the caller
            then loads a state dict), so loading a saved policy needs no external files.
    """
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    if hf_config is not None:
        cfg_dict = dict(hf_config)
        model_type = cfg_dict.pop("model_type")
        if config.encoder == "fresh":
            return BertModel(BertConfig(**cfg_dict), add_pooling_layer=False)
        if config.causal_encoder:
            cfg_dict["is_decoder"] = True
        return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg_dict))
    if config.encoder == "fresh":
        bert = BertConfig(
            vocab_size=1,  # tokens come in as inputs_embeds; the word table is never used
            hidden_size=config.d_model,
            num_hidden_layers=config.n_encoder_layers,
            num_attention_heads=config.n_encoder_heads,
            intermediate_size=config.ffn_mult * config.d_model,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            max_position_embeddings=config.max_history + 1,
            type_vocab_size=1,
            pad_token_id=0,
            is_decoder=config.causal_encoder,  # BertModel then applies a causal (+ padding) self-attention mask
        )
        return BertModel(bert, add_pooling_layer=False)
    from llm_policy.text_encoder import default_model_path

    path = config.encoder_name_or_path or str(default_model_path())
    extra: dict[str, Any] = {"is_decoder": True, "use_cache": False} if config.causal_encoder else {}
    try:
        return AutoModel.from_pretrained(path, local_files_only=config.local_files_only, **extra)
    except (OSError, ValueError) as err:
        raise OSError(
            f"could not load the pretrained state encoder '{path}' (local_files_only={config.local_files_only}): {err}"
        ) from err


class StateEncoder(nn.Module):
    """History + context -> pooled state ``(B, d)`` and per-token states ``(B, H + 1, d)``.

    Args:
        config: policy config (mode, sizes).
        item_dim: size of the item representations fed in (text embedding size).
        context_dim: size of the visible context vector D.
        hf_config: rebuild the transformer from this saved config (see :func:`build_encoder_transformer`).
    """

    def __init__(
        self,
        config: SlatePolicyConfig,
        item_dim: int,
        context_dim: int,
        hf_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.transformer = build_encoder_transformer(config, hf_config)
        if config.encoder == "pretrained" and config.encoder_lora_rank > 0:
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError("encoder_lora_rank > 0 needs the optional package 'peft': pip install peft") from err
            lora = LoraConfig(
                r=config.encoder_lora_rank,
                lora_alpha=config.encoder_lora_alpha,
                lora_dropout=config.dropout,
                target_modules=list(config.encoder_lora_targets),
                bias="none",
            )
            self.transformer = get_peft_model(self.transformer, lora)  # freezes the pretrained weights
        elif config.encoder == "pretrained" and not config.train_pretrained_encoder:
            for p in self.transformer.parameters():
                p.requires_grad_(False)
        if config.causal_encoder and not getattr(self.transformer.config, "is_decoder", False):
            raise ValueError("causal_encoder=True needs an encoder whose config supports is_decoder (BERT-style)")
        d = int(self.transformer.config.hidden_size)
        self.dim = d
        self.max_positions = int(getattr(self.transformer.config, "max_position_embeddings", 1 << 30))
        self.item_proj = nn.Linear(item_dim, d)
        self.response_embedding = nn.Embedding(3, d)  # 0 padding, 1 skipped, 2 clicked
        self.consumption_proj = nn.Linear(1, d)
        self.context_proj = nn.Linear(max(context_dim, 1), d)
        self.context_type = nn.Parameter(torch.zeros(d))
        self.context_dim = context_dim
        self._init_token_parts(float(getattr(self.transformer.config, "initializer_range", 0.02)))

    def _init_token_parts(self, std: float) -> None:
        """Initialise the response, consumption and context parts of the tokens like the transformer's own
        embeddings (normal, ``std`` = its ``initializer_range``, zero bias).

        PyTorch's defaults (N(0, 1) embeddings, U(-1, 1) for a 1-input linear layer) would make these
        parts ~50x larger than the projected item features and the position embeddings, so after the
        embedding LayerNorm a token would say little about *which* item it is or where it sits.
        """
        nn.init.normal_(self.response_embedding.weight, std=std)
        for layer in (self.consumption_proj, self.context_proj):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def hf_config_dict(self) -> dict[str, Any]:
        """The transformer's Hugging Face config as a JSON-able dict (saved with the policy)."""
        cfg = self.transformer.config.to_dict()
        for key in ("_name_or_path", "transformers_version", "_commit_hash", "architectures"):
            cfg.pop(key, None)
        return cfg

    def forward(
        self,
        history_items: torch.Tensor,
        history_valid: torch.Tensor,
        history_responses: torch.Tensor,
        history_consumption: torch.Tensor,
        context: torch.Tensor,
        projected: bool = False,
        all_positions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a batch of users.

        Args:
            history_items: ``(B, H, item_dim)`` representations of the history items, or
                ``(B, H, d)`` ones already passed through :attr:`item_proj` when ``projected``.
            history_valid: ``(B, H)`` bool, False for padding slots.
            history_responses: ``(B, H)`` int in {0, 1, 2}.
            history_consumption: ``(B, H)`` float consumed fraction.
            context: ``(B, D)`` float visible context.
            all_positions: return the pooled state of every prefix ``(B, H + 1, d)`` (running mean
                over valid tokens <= t, or token t's own state with "last" pooling; needs
                ``causal_encoder``, where the states of a prefix do not depend on later tokens).

        Returns:
            ``pooled (B, d)`` (or ``(B, H + 1, d)`` with ``all_positions``), ``states (B, H + 1, d)``
            (token 0 = context) and ``mask (B, H + 1)`` bool (True = real token).
        """
        b, h = history_valid.shape
        if h + 1 > self.max_positions:
            raise ValueError(
                f"history length H={h} (+1 context token) exceeds the encoder's {self.max_positions} positions; "
                "raise SlatePolicyConfig.max_history"
            )
        tokens = (
            (history_items if projected else self.item_proj(history_items))
            + self.response_embedding(history_responses.clamp(0, 2))
            + self.consumption_proj(history_consumption.unsqueeze(-1))
        )
        ctx = context if self.context_dim > 0 else context.new_zeros(b, 1)
        ctx_token = (self.context_proj(ctx) + self.context_type).unsqueeze(1)
        embeds = torch.cat([ctx_token, tokens], dim=1)
        mask = torch.cat([history_valid.new_ones(b, 1), history_valid], dim=1)
        param = next(self.transformer.parameters())
        if all_positions and not self.config.causal_encoder:
            raise ValueError("all_positions=True needs SlatePolicyConfig.causal_encoder=True")
        kwargs: dict[str, Any] = {"use_cache": False} if self.config.causal_encoder else {}
        out = self.transformer(inputs_embeds=embeds.to(param.dtype), attention_mask=mask.long(), **kwargs)
        states = out.last_hidden_state
        if all_positions:
            pooled = states if self.config.pooling == "last" else running_mean_pool(states, mask)
        elif self.config.pooling == "context":
            pooled = states[:, 0]
        elif self.config.pooling == "last":
            positions = torch.arange(h + 1, device=mask.device)
            last = torch.where(mask, positions, 0).argmax(dim=1)
            pooled = states[torch.arange(b, device=states.device), last]
        else:
            m = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * m).sum(dim=1) / m.sum(dim=1)
        return pooled, states, mask
