"""The encoder-decoder slate model shared by the SB3 policy and CE pretraining.

``SlateModel`` = cached item text embeddings (a buffer) + :class:`StateEncoder`
+ :class:`SlateDecoder` + value head. It consumes the longrec observation
contract (``docs/architecture.md``) as a dict of tensors::

    obs (dict of tensors) ─► history tokens + context token ─► StateEncoder ─► pooled state ─► value head
                                                                 │ token states
    candidate ids ─► item text embeddings ─────────────► SlateDecoder (GPT-2, cross-attn, pointer)
                                                                 └─► slate (K candidate indices), log-probs

``save_pretrained(dir)`` writes ``config.json`` (model config, sizes, the
encoder's Hugging Face config) and ``model.safetensors`` (all weights and the
item embeddings); ``from_pretrained(dir)`` rebuilds it with no other file
(following nanoGPT / Hugging Face ``from_pretrained``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.atomic_file import atomic_write_bytes
from llm_policy.config import ITEM_STATISTICS, SlatePolicyConfig
from llm_policy.slate_decoder import PreparedCandidates, SlateDecoder, SlateOutput
from llm_policy.state_encoder import StateEncoder

__all__ = ["EncodedState", "SlateModel", "as_item_embeddings", "OBS_KEYS"]

OBS_KEYS = ("history_item_ids", "history_responses", "history_consumption", "candidate_item_ids", "context")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def as_item_embeddings(item_embeddings: Any) -> torch.Tensor:
    """Accept a tensor, array, or path to ``.npy`` / ``.pt`` / ``.safetensors`` -> float32 ``(N, d)`` tensor."""
    if isinstance(item_embeddings, str | os.PathLike):
        path = Path(item_embeddings)
        if path.suffix == ".npy":
            item_embeddings = np.load(path)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise ValueError(f"{path} must hold exactly one tensor, holds {sorted(tensors)}")
            item_embeddings = next(iter(tensors.values()))
        elif path.suffix in (".pt", ".pth"):
            item_embeddings = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"item embeddings file must end in .npy, .safetensors, .pt or .pth, got {path}")
    t = torch.as_tensor(np.asarray(item_embeddings) if not isinstance(item_embeddings, torch.Tensor) else item_embeddings)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"item_embeddings must have shape (num_items, dim), got {tuple(t.shape)}")
    return t.detach().float().cpu()


@dataclass
class EncodedState:
    """Output of :meth:`SlateModel.encode`."""

    pooled: torch.Tensor
    """(B, d_enc) pooled user state ((B, H + 1, d_enc) per prefix with ``encode(all_positions=True)``)"""
    states: torch.Tensor
    """(B, H + 1, d_enc) token states"""
    mask: torch.Tensor
    """(B, H + 1) bool"""
    candidates: PreparedCandidates
    """projected candidates (per example, or the shared catalog)"""
    last_clicked: torch.Tensor | None = None
    """(B,) each user's most recent clicked history item (N if none): the text-match term's query
    (None when the model has no text-match term)"""



class SlateModel(nn.Module):
    """Item embeddings + state encoder + slate decoder + value head.

    Args:
        config: model sizes and switches.
        item_embeddings: ``(N, item_dim)`` text embeddings of the catalog (row i = item id i);
            a zero padding row is appended for id N.
        context_dim: size D of the observation's ``context`` vector.
        encoder_hf_config: rebuild the state encoder's transformer from this saved config
            (used by :meth:`from_pretrained`; weights then come from the checkpoint).
    """

    def __init__(
        self,
        config: SlatePolicyConfig,
        item_embeddings: Any,
        context_dim: int,
        encoder_hf_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        emb = as_item_embeddings(item_embeddings)
        self.config = config
        self.num_items, self.item_dim = int(emb.shape[0]), int(emb.shape[1])
        self.context_dim = int(context_dim)
        self.register_buffer("item_embeddings", torch.cat([emb, emb.new_zeros(1, self.item_dim)]), persistent=True)
        self.item_id_embedding = (
            nn.Embedding(self.num_items + 1, self.item_dim, padding_idx=self.num_items) if config.item_id_embeddings else None
        )
        if self.item_id_embedding is not None:
            nn.init.zeros_(self.item_id_embedding.weight)  # start as the pure text model
            active = torch.ones(self.num_items + 1, dtype=torch.bool)
            active[-1] = False
            self.register_buffer("item_id_active", active, persistent=True)
            """which items use their id vector (see :meth:`restrict_item_ids`); row N = padding"""
        if config.item_statistics and self.item_dim <= len(ITEM_STATISTICS):
            raise ValueError(f"item_statistics=True needs the text embedding before the {len(ITEM_STATISTICS)} statistic "
                             f"columns, but the item features have only {self.item_dim} columns")
        if config.text_match_dims > self.item_dim:
            raise ValueError(f"text_match_dims={config.text_match_dims} exceeds the item feature size {self.item_dim}")
        self.text_match_weight = (
            nn.Parameter(torch.full((2,), float(config.text_match_init))) if config.text_match_dims > 0 else None
        )
        """text-match weights w (see ``SlatePolicyConfig.text_match_dims``): [0] for candidates with a learned
        id vector, [1] for those scored by their features alone (rare or unseen items, whose text is
        most of what the model knows about them)"""
        self.text_match_offset = nn.Parameter(torch.zeros(1)) if config.text_match_dims > 0 else None
        """with the text-match term: a logit offset added to the candidates scored by their features alone.
        Their logits come from a different part of the model than those of items with an id vector; a
        large weight [1] with a negative offset lifts only the rare items whose text matches well (set
        on validation data with the weights: ``llm_policy.next_item.calibrate_text_match``)"""
        self.catalog: str | None = None
        """fingerprint of the catalog whose items ``item_embeddings`` describe (``envs.catalog.Catalog.fingerprint``;
        saved): None when unknown"""
        self.obs_sizes: dict[str, int] | None = None
        """observation sizes ``N, H, C, D, K`` it was trained for (saved, lets a policy rebuild its spaces)"""
        self.encoder = StateEncoder(config, self.item_dim, self.context_dim, hf_config=encoder_hf_config)
        self.decoder = SlateDecoder(config, self.encoder.dim, self.item_dim)
        self.value_head = nn.Sequential(
            nn.Linear(self.encoder.dim, config.value_hidden), nn.Tanh(), nn.Linear(config.value_hidden, 1)
        )

    # ------------------------------------------------------------------ items

    def item_repr(self, ids: torch.Tensor | None = None, item_table: torch.Tensor | None = None) -> torch.Tensor:
        """Representations of item ids (any shape; id N = padding -> zeros); ``None`` = the whole catalog ``(N, d)``.

        ``item_table`` ``(N + 1, d)`` replaces the cached embeddings (e.g. embeddings being fine-tuned).
        """
        if ids is None:
            ids = torch.arange(self.num_items, device=self.item_embeddings.device)
        table = self.item_embeddings if item_table is None else item_table
        x = table[ids]
        if self.item_id_embedding is not None:
            active = self.item_id_active[ids]
            if self.training and self.config.item_id_dropout > 0:
                active = active & (torch.rand(active.shape, device=active.device) >= self.config.item_id_dropout)
            x = x + self.item_id_embedding(ids) * active.unsqueeze(-1).to(x.dtype)
        return x

    def text_match_keys(self, ids: torch.Tensor | None = None, item_table: torch.Tensor | None = None) -> torch.Tensor | None:
        """Unit-norm text features ``x[:m]`` of item ids (``None`` = the catalog), or None when the term is off.

        The padding id N gives zeros (its features are zero), so a user without a clicked item gets no term.
        """
        m = self.config.text_match_dims
        if m == 0:
            return None
        if ids is None:
            ids = torch.arange(self.num_items, device=self.item_embeddings.device)
        table = self.item_embeddings if item_table is None else item_table
        return nn.functional.normalize(table[ids][..., :m], dim=-1)

    def with_text_match(
        self,
        cands: PreparedCandidates,
        last_items: torch.Tensor,
        candidate_ids: torch.Tensor | None = None,
        item_table: torch.Tensor | None = None,
    ) -> PreparedCandidates:
        """``cands`` with the text-match term of the last clicked items ``(B,)`` attached (unchanged when off).

        The term of candidate c is ``w_c * cos(last item, c) + b_c``: ``w_c`` and ``b_c`` are
        ``text_match_weight[0]`` and 0 for candidates with an id vector, ``text_match_weight[1]`` and
        ``text_match_offset`` for those scored by their features alone. ``candidate_ids`` ``(B, C)`` name
        the candidates; None = ``cands`` holds the whole catalog. The term is computed once here (every
        slate position reuses it); the cosines are fixed features: no gradient, as the m-wide product
        would cost several times the d-wide pointer product in backward; only the weights and the offset learn.
        """
        if self.text_match_weight is None:
            return cands
        keys = self.text_match_keys(candidate_ids, item_table)
        query = self.text_match_keys(last_items, item_table)
        with torch.no_grad():
            cosine = query @ keys.T if candidate_ids is None else torch.einsum("bm,bcm->bc", query, keys)
        ids = torch.arange(self.num_items, device=last_items.device) if candidate_ids is None else candidate_ids
        has_id = self.item_id_active[ids] if self.item_id_embedding is not None else torch.zeros_like(ids, dtype=torch.bool)
        weight = torch.where(has_id, self.text_match_weight[0], self.text_match_weight[1])
        offset = torch.where(has_id, torch.zeros_like(self.text_match_offset), self.text_match_offset)
        cands.match_logits = weight * cosine + offset
        return cands

    def last_clicked(self, history_ids: torch.Tensor, history_responses: torch.Tensor) -> torch.Tensor:
        """``(B,)`` each row's most recent clicked history item (N = padding when there is none)."""
        positions = torch.arange(history_ids.shape[1], device=history_ids.device)
        clicked = (history_ids != self.num_items) & (history_responses == 2)
        last = torch.where(clicked, positions, -1).max(dim=1).values
        return torch.where(last >= 0, history_ids.gather(1, last.clamp_min(0).unsqueeze(1)).squeeze(1), self.num_items)

    def disable_dropout(self) -> SlateModel:
        """Switch off every training-time regulariser: dropout layers and ``item_id_dropout``.

        For PPO, whose rollouts (eval mode) and updates (train mode) must score actions alike; the
        configs saved with the model then say 0 too. Returns ``self``.
        """
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        for hf_config in (self.encoder.transformer.config, self.decoder.gpt.config):
            for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
                if hasattr(hf_config, name):
                    setattr(hf_config, name, 0.0)
        self.config = dataclasses.replace(self.config, dropout=0.0, item_id_dropout=0.0)
        self.encoder.config = self.config
        return self

    @contextlib.contextmanager
    def features_only(self) -> Iterator[SlateModel]:
        """Within the block every item is represented by its features alone, as an item the model has never
        seen (no learned id vector, in the history and among the candidates); the id vectors in use before
        are restored after it. Without id embeddings the model is unchanged."""
        if self.item_id_embedding is None:
            yield self
            return
        saved = self.item_id_active.clone()
        self.item_id_active[:-1] = False
        try:
            yield self
        finally:
            self.item_id_active.copy_(saved)

    def restrict_item_ids(self, active: torch.Tensor | np.ndarray) -> None:
        """Use learned id vectors only for the items where ``active`` ``(N,)`` is True.

        The other items are represented by their features alone (text, ...), exactly as an item the
        model has never seen, and their id vectors get no gradient. Training restricts ids to items
        with enough interactions to estimate one (:class:`llm_policy.next_item.LLMNextItemConfig`
        ``id_min_count``), so a rare item's score comes from what its text says, not from a vector
        that only ever received "not this one" gradients.
        """
        if self.item_id_embedding is None:
            raise ValueError("restrict_item_ids needs config.item_id_embeddings=True")
        active = torch.as_tensor(active, dtype=torch.bool)  # numpy or torch (any device)
        if tuple(active.shape) != (self.num_items,):
            raise ValueError(f"active must have shape ({self.num_items},), got {tuple(active.shape)}")
        self.item_id_active[:-1] = active.to(self.item_id_active.device)

    def set_catalog(self, item_embeddings: Any, catalog: str | None = None) -> SlateModel:
        """Serve another catalog with the same weights: ``item_embeddings`` ``(N', item_dim)`` (text
        embeddings of the new items, by the same text encoder) replace the item table, id ``N'`` becomes
        the padding id, and every item is represented by its features alone, as an item the model has
        never seen (learned id vectors belong to the old items: the new ones get none). ``catalog`` is the
        new catalog's fingerprint (``envs.catalog.Catalog.fingerprint``). A model with
        ``config.item_statistics`` also takes text embeddings alone: the new items then get zero statistics
        (nothing logged). Returns ``self``.
        """
        emb = as_item_embeddings(item_embeddings).to(self.item_embeddings.device, self.item_embeddings.dtype)
        if self.config.item_statistics and emb.shape[1] == self.item_dim - len(ITEM_STATISTICS):
            emb = torch.cat([emb, emb.new_zeros(emb.shape[0], len(ITEM_STATISTICS))], dim=1)
        if emb.shape[1] != self.item_dim:
            raise ValueError(f"the new catalog's item features have {emb.shape[1]} dimensions, the model {self.item_dim}: "
                             "embed its texts with the text encoder the model was trained with")
        self.num_items = int(emb.shape[0])
        self.item_embeddings = torch.cat([emb, emb.new_zeros(1, self.item_dim)])
        if self.item_id_embedding is not None:
            device = self.item_id_embedding.weight.device
            self.item_id_embedding = nn.Embedding(self.num_items + 1, self.item_dim, padding_idx=self.num_items).to(device)
            nn.init.zeros_(self.item_id_embedding.weight)
            self.item_id_active = torch.zeros(self.num_items + 1, dtype=torch.bool, device=device)
        if self.obs_sizes is not None:
            self.obs_sizes = {**self.obs_sizes, "N": self.num_items}
        self.catalog = catalog
        return self

    def item_statistics(self) -> torch.Tensor:
        """``(N, len(ITEM_STATISTICS))`` the items' logged statistics (the last feature columns; see
        ``SlatePolicyConfig.item_statistics``); a ValueError for a model built without them."""
        if not self.config.item_statistics:
            raise ValueError("this model was built without item statistics (policy.item_statistics=false)")
        return self.item_embeddings[: self.num_items, -len(ITEM_STATISTICS):]

    # ------------------------------------------------------------------ encoding

    def _ids(self, x: torch.Tensor) -> torch.Tensor:
        # SB3's rollout buffer stores observations as float32; ids are exact integers there.
        return x if not torch.is_floating_point(x) else x.round().long()

    def encode(
        self,
        obs: Mapping[str, torch.Tensor],
        *,
        full_catalog: bool = False,
        candidate_mask: torch.Tensor | None = None,
        item_table: torch.Tensor | None = None,
        all_positions: bool = False,
    ) -> EncodedState:
        """Encode an observation batch (the contract's five arrays, batch-first).

        Args:
            obs: dict with the observation keys; ``candidate_item_ids`` may be omitted when
                ``full_catalog`` is True.
            full_catalog: score the whole catalog (shared ``(N, d)`` candidates) instead of
                ``candidate_item_ids``; slates are then catalog item ids.
            candidate_mask: optional bool mask, True = may be chosen: ``(B, C)``, or ``(B, N)`` /
                ``(N,)`` with ``full_catalog``.
            item_table: ``(N + 1, item_dim)`` item embeddings to use instead of the cached buffer
                (row N = padding); lets gradients reach a text encoder being fine-tuned.
            all_positions: ``pooled`` is then ``(B, H + 1, d)``, the pooled state of every prefix
                (needs ``config.causal_encoder``; see :meth:`StateEncoder.forward`).
        """
        missing = [k for k in OBS_KEYS if k not in obs and not (full_catalog and k == "candidate_item_ids")]
        if missing:
            raise ValueError(f"observation is missing keys {missing}; expected {list(OBS_KEYS)}")
        device = self.item_embeddings.device
        if item_table is not None and tuple(item_table.shape) != tuple(self.item_embeddings.shape):
            raise ValueError(f"item_table must have shape {tuple(self.item_embeddings.shape)} (N + 1 rows), got {tuple(item_table.shape)}")
        hist = self._ids(obs["history_item_ids"]).to(device)
        if hist.numel() and (int(hist.min()) < 0 or int(hist.max()) > self.num_items):
            raise ValueError(
                f"history_item_ids must lie in [0, {self.num_items}] (N = padding), got [{int(hist.min())}, {int(hist.max())}]"
            )
        responses = self._ids(obs["history_responses"]).to(device)
        valid = (hist != self.num_items) & (responses != 0)
        cand = None
        if not full_catalog:
            cand = self._ids(obs["candidate_item_ids"]).to(device)
            if cand.numel() and (int(cand.min()) < 0 or int(cand.max()) >= self.num_items):
                raise ValueError(
                    f"candidate_item_ids must lie in [0, {self.num_items - 1}], got [{int(cand.min())}, {int(cand.max())}]"
                )
        mask_arg = None if candidate_mask is None else candidate_mask.to(device)
        dec = self.decoder
        # Linear maps commute with gathering rows: when a batch refers to more item slots than the
        # catalog has items, project the catalog once and gather (same numbers, far fewer FLOPs).
        slots = hist.numel() + (cand.numel() if cand is not None else self.num_items)
        if full_catalog or slots >= self.num_items + 1:
            table = self.item_repr(torch.arange(self.num_items + 1, device=device), item_table)
            enc_tab = self.encoder.item_proj(table)
            history_items, projected = enc_tab[hist], True
            key_tab, in_tab = dec.key_proj(table), dec.input_proj(table)
            if full_catalog:
                cands = PreparedCandidates(key_tab[:-1], in_tab[:-1], mask_arg)
            else:
                cands = PreparedCandidates(key_tab[cand], in_tab[cand], mask_arg)
        else:
            history_items, projected = self.item_repr(hist, item_table), False
            cands = dec.prepare_candidates(self.item_repr(cand, item_table), mask_arg)
        last_clicked = None
        if self.text_match_weight is not None:
            last_clicked = self.last_clicked(hist, responses)
            self.with_text_match(cands, last_clicked, None if full_catalog else cand, item_table)
        pooled, states, mask = self.encoder(
            history_items,
            valid,
            responses,
            obs["history_consumption"].to(device).float(),
            obs["context"].to(device).float(),
            projected=projected,
            all_positions=all_positions,
        )
        return EncodedState(pooled, states, mask, cands, last_clicked)

    # ------------------------------------------------------------------ heads

    def value(self, enc: EncodedState) -> torch.Tensor:
        """``(B,)`` state values."""
        return self.value_head(enc.pooled).squeeze(-1)

    def score_slate(self, enc: EncodedState, slate: torch.Tensor) -> SlateOutput:
        """Teacher-forced scoring of given slates ``(B, K)`` (one decoder pass)."""
        return self.decoder.teacher_forced(enc.states, enc.mask, enc.pooled, enc.candidates, slate)

    def generate(self, enc: EncodedState, slate_size: int, **options: Any) -> SlateOutput:
        """Sample (or greedily decode, or follow ``forced_slate``) slates of ``slate_size`` positions.

        ``options`` are :meth:`SlateDecoder.decode`'s keywords: ``greedy``, ``generator``,
        ``use_cache``, ``forced_slate``.
        """
        return self.decoder.decode(
            enc.states, enc.mask, enc.pooled, enc.candidates, slate_size, **options,
        )

    def candidate_scores(self, enc: EncodedState) -> torch.Tensor:
        """``(B, C)`` logits of slate position 0 (the next-item ranking scores), masked candidates at -inf-ish."""
        return self.decoder.first_position_logits(enc.states, enc.mask, enc.pooled, enc.candidates)

    # ------------------------------------------------------------------ persistence

    def export_config(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_config": self.config.to_dict(),
            "num_items": self.num_items,
            "item_dim": self.item_dim,
            "context_dim": self.context_dim,
            "encoder_hf_config": self.encoder.hf_config_dict(),
            "obs_sizes": self.obs_sizes,
            "catalog": self.catalog,
        }

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomically) to ``directory``."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
        atomic_write_bytes(directory / CONFIG_FILE, json.dumps(self.export_config(), indent=2).encode())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> SlateModel:
        """Rebuild a model saved with :meth:`save_pretrained` (no other files needed)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not a saved slate model: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
        meta = json.loads((directory / CONFIG_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {meta.get('format_version')!r} in {directory}; expected {FORMAT_VERSION}")
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
        config = SlatePolicyConfig.from_dict(meta["model_config"])
        model = cls(
            config,
            torch.zeros(meta["num_items"], meta["item_dim"]),
            meta["context_dim"],
            encoder_hf_config=meta["encoder_hf_config"],
        )
        model.load_state_dict(state)
        model.obs_sizes = meta.get("obs_sizes")
        model.catalog = meta.get("catalog")
        return model.to(map_location)
