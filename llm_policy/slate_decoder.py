"""Slate decoder: "the decoder as the slate-generating policy".

A GPT-2 style causal transformer (Radford et al. 2019; ``transformers.GPT2Model``
with ``add_cross_attention=True``) cross-attends to the state encoder's token
states and writes the slate one position at a time. Its output vocabulary is
not fixed: as in Pointer Networks (Vinyals et al. 2015), the logits at slate
position k are dot products between the decoder state and the embeddings of
this step's candidates,

    logit[k, c] = <W_q h_k, W_key x_c> / sqrt(d)      (minus infinity for candidates
                                                       already chosen or masked; the scale is
                                                       ``SlatePolicyConfig.pointer_scale``)

so the same weights score 20 logged candidates or a whole 10k-item catalog.
The decoder's input at position 0 is a start token derived from the pooled
user state, at position k > 0 the embedding of the item chosen at k - 1
(the slate is thus an autoregressive sequence, as in seq2slate, Bello et al. 2018).

* :meth:`SlateDecoder.decode` samples or greedily decodes K positions step by
  step with a key/value cache;
* :meth:`SlateDecoder.teacher_forced` scores a *given* slate in one pass
  (log-prob per position, entropy per position), which PPO and cross-entropy
  pretraining use;
* :meth:`SlateDecoder.pointer_logits` gives the unmasked pointer logits of
  decoder states (next-item scoring over the whole catalog).

Candidates are given either per example ``(B, C, item_dim)`` or as one shared
matrix ``(N, item_dim)`` (the full catalog).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from llm_policy.config import SlatePolicyConfig

__all__ = ["SlateDecoder", "SlateOutput", "PreparedCandidates"]


@functools.cache
def _cache_argument() -> str:
    """The key/value cache's name in ``GPT2Model.forward`` and its output: ``cache`` since transformers renamed
    it (``past_key_values`` stays a deprecated alias until 5.40), ``past_key_values`` before (5.17 on a GPU image)."""
    from transformers import GPT2Model

    return "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


@dataclass
class SlateOutput:
    """Result of decoding or scoring slates (all tensors batch-first)."""

    slate: torch.Tensor
    """(B, K) int64 candidate indices"""
    log_probs: torch.Tensor
    """(B, K) log pi(a_k | s, a_<k)"""
    entropy: torch.Tensor
    """(B, K) entropy of the position-k distribution (given the slate's own prefix)"""
    logits: torch.Tensor | None = None
    """(B, K, C) masked logits (teacher-forced scoring only)"""

    @property
    def log_prob(self) -> torch.Tensor:
        """(B,) log-probability of the whole slate."""
        return self.log_probs.sum(dim=1)


@dataclass
class PreparedCandidates:
    """Candidate keys (for scoring) and decoder inputs (for feeding back a chosen item)."""

    keys: torch.Tensor
    """(B, C, d) or (C, d)"""
    inputs: torch.Tensor
    """(B, C, d) or (C, d)"""
    mask: torch.Tensor | None
    """(B, C) or (C,) bool, True = may be chosen; None = all"""
    match_logits: torch.Tensor | None = None
    """(B, C) text-match term added to every slate position's logits (``SlateModel.with_text_match``;
    None = no term)"""

    @property
    def shared(self) -> bool:
        return self.keys.ndim == 2

    @property
    def num_candidates(self) -> int:
        return int(self.keys.shape[-2])


def _masked_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    # A finite minimum keeps log_softmax and p*log p free of NaN; exp() still gives exactly 0.
    return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)


def _entropy(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).sum(dim=-1)


class SlateDecoder(nn.Module):
    """GPT-2 decoder with cross-attention and pointer scoring over candidates.

    Args:
        config: policy config (``d_model``, ``n_decoder_layers``, ``n_decoder_heads``, ``max_slate_size``, ``dropout``).
        encoder_dim: width of the encoder states it cross-attends to (projected if it differs from d_model).
        item_dim: width of the raw candidate representations.
    """

    def __init__(self, config: SlatePolicyConfig, encoder_dim: int, item_dim: int) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        d = config.d_model
        self.d_model = d
        self.max_slate_size = config.max_slate_size
        gpt_config = GPT2Config(
            vocab_size=1,  # inputs come as inputs_embeds; the token table is unused
            n_positions=config.max_slate_size,
            n_embd=d,
            n_layer=config.n_decoder_layers,
            n_head=config.n_decoder_heads,
            n_inner=config.ffn_mult * d,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            add_cross_attention=True,
            bos_token_id=None,
            eos_token_id=None,
        )
        self.gpt = GPT2Model(gpt_config)
        self.memory_proj = nn.Identity() if encoder_dim == d else nn.Linear(encoder_dim, d)
        self.start_proj = nn.Linear(encoder_dim, d)
        self.start_token = nn.Parameter(torch.zeros(d))
        self.key_proj = nn.Linear(item_dim, d)
        self.input_proj = nn.Linear(item_dim, d)
        self.query_proj = nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(d) if config.pointer_scale is None else float(config.pointer_scale)

    # ------------------------------------------------------------------ building blocks

    def prepare_candidates(self, candidates: torch.Tensor, mask: torch.Tensor | None = None) -> PreparedCandidates:
        """Project raw candidate representations ``(B, C, item_dim)`` or shared ``(N, item_dim)`` once."""
        if candidates.ndim not in (2, 3):
            raise ValueError(f"candidates must be (B, C, item_dim) or (N, item_dim), got {tuple(candidates.shape)}")
        if mask is not None and mask.shape != candidates.shape[:-1] and not (
            candidates.ndim == 2 and mask.ndim == 2 and mask.shape[1] == candidates.shape[0]
        ):
            raise ValueError(f"candidate mask shape {tuple(mask.shape)} does not match candidates {tuple(candidates.shape[:-1])}")
        return PreparedCandidates(self.key_proj(candidates), self.input_proj(candidates), mask)

    def _chosen_inputs(self, cands: PreparedCandidates, chosen: torch.Tensor) -> torch.Tensor:
        """Decoder inputs of chosen candidates ``(B, L)`` -> ``(B, L, d)``."""
        if cands.shared:
            return cands.inputs[chosen]
        return cands.inputs.gather(1, chosen.unsqueeze(-1).expand(-1, -1, cands.inputs.shape[-1]))

    def pointer_logits(self, hidden: torch.Tensor, cands: PreparedCandidates) -> torch.Tensor:
        """Unmasked pointer logits ``(B, L, C)`` of decoder states ``(B, L, d)`` over the candidates.

        ``logit[b, l, c] = pointer_scale * <W_q hidden[b, l], keys[c]>`` (``keys`` per example or shared),
        plus the text-match term ``cands.match_logits[b, c]`` when present, the same at every slate
        position. No candidate is masked: :meth:`teacher_forced` and :meth:`decode` mask the chosen and
        disallowed ones; full-catalog next-item scoring uses the logits of position 0 as they are.
        """
        q = self.query_proj(hidden) * self.scale
        logits = q @ cands.keys.T if cands.shared else torch.einsum("bld,bcd->blc", q, cands.keys)
        if cands.match_logits is None:
            return logits
        return logits + cands.match_logits.unsqueeze(1).to(logits.dtype)

    def _allowed_base(self, cands: PreparedCandidates, batch: int, device: torch.device) -> torch.Tensor:
        c = cands.num_candidates
        if cands.mask is None:
            return torch.ones(batch, c, dtype=torch.bool, device=device)
        m = cands.mask.to(device=device, dtype=torch.bool)
        return m.expand(batch, c) if m.ndim == 1 else m

    def _check_slate_size(self, k: int, allowed: torch.Tensor) -> None:
        if not 1 <= k <= self.max_slate_size:
            raise ValueError(f"slate size K={k} must lie in [1, max_slate_size={self.max_slate_size}]")
        fewest = int(allowed.sum(dim=1).min()) if allowed.numel() else 0
        if fewest < k:
            raise ValueError(f"a row has only {fewest} allowed candidates, fewer than the slate size K={k}")

    def _run(self, embeds: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor, cache=None, use_cache=False):
        return self.gpt(
            inputs_embeds=embeds,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask.long(),
            use_cache=use_cache,
            **{_cache_argument(): cache},
        )

    def start(self, pooled: torch.Tensor) -> torch.Tensor:
        """Decoder input of position 0 ``(B, 1, d)`` from the pooled user state."""
        return (self.start_proj(pooled) + self.start_token).unsqueeze(1)

    # ------------------------------------------------------------------ public API

    def teacher_forced(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        pooled: torch.Tensor,
        cands: PreparedCandidates,
        slate: torch.Tensor,
    ) -> SlateOutput:
        """Score a given slate ``(B, K)`` in one causal pass: per-position log-probs, entropies and logits."""
        b, k = slate.shape
        slate = slate.long()
        allowed0 = self._allowed_base(cands, b, slate.device)
        self._check_slate_size(k, allowed0)
        c = cands.num_candidates
        if int(slate.min()) < 0 or int(slate.max()) >= c:
            raise ValueError(f"slate entries must lie in [0, {c - 1}], got min {int(slate.min())}, max {int(slate.max())}")
        memory = self.memory_proj(memory)
        embeds = torch.cat([self.start(pooled), self._chosen_inputs(cands, slate[:, :-1])], dim=1)
        hidden = self._run(embeds, memory, memory_mask).last_hidden_state
        logits = self.pointer_logits(hidden, cands)  # (B, K, C)
        # chosen_before[b, k, c] = candidate c appears in slate[b, :k]
        one_hot = torch.zeros(b, k, c, dtype=torch.bool, device=slate.device)
        one_hot.scatter_(2, slate.unsqueeze(-1), True)
        chosen_before = torch.cumsum(one_hot.long(), dim=1) - one_hot.long()
        allowed = allowed0.unsqueeze(1) & (chosen_before == 0)
        logits = _masked_logits(logits, allowed)
        log_p = torch.log_softmax(logits, dim=-1)
        log_probs = log_p.gather(2, slate.unsqueeze(-1)).squeeze(-1)
        return SlateOutput(slate=slate, log_probs=log_probs, entropy=_entropy(log_p), logits=logits)

    def first_position_logits(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        pooled: torch.Tensor,
        cands: PreparedCandidates,
    ) -> torch.Tensor:
        """``(B, C)`` logits of slate position 0 (the next-item ranking scores), disallowed candidates at the
        dtype's minimum (``cands.mask``; nothing is chosen yet)."""
        hidden = self._run(self.start(pooled), self.memory_proj(memory), memory_mask).last_hidden_state
        logits = self.pointer_logits(hidden, cands).squeeze(1)  # squeeze, not [:, 0]: its backward allocates no (B, 1, C) zeros
        allowed = self._allowed_base(cands, logits.shape[0], logits.device)
        return _masked_logits(logits, allowed)

    def decode(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        pooled: torch.Tensor,
        cands: PreparedCandidates,
        slate_size: int,
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        forced_slate: torch.Tensor | None = None,
    ) -> SlateOutput:
        """Generate slates position by position (sampling, or greedy argmax).

        ``use_cache=False`` recomputes the whole prefix at every step (same numbers, slower).
        Sampling draws from ``generator`` when given, else from torch's global generator.
        ``forced_slate (B, K)``: follow this slate instead of choosing (step-by-step scoring,
        the slow equivalent of :meth:`teacher_forced`).
        """
        b = pooled.shape[0]
        allowed = self._allowed_base(cands, b, pooled.device).clone()
        self._check_slate_size(slate_size, allowed)
        memory = self.memory_proj(memory)
        step_input = self.start(pooled)
        prefix = step_input
        cache = None
        chosen, log_probs, entropies = [], [], []
        rows = torch.arange(b, device=pooled.device)
        for _ in range(slate_size):
            if use_cache:
                out = self._run(step_input, memory, memory_mask, cache=cache, use_cache=True)
                cache = getattr(out, _cache_argument())
                h = out.last_hidden_state[:, -1:]
            else:
                h = self._run(prefix, memory, memory_mask).last_hidden_state[:, -1:]
            logits = _masked_logits(self.pointer_logits(h, cands)[:, 0], allowed)
            log_p = torch.log_softmax(logits, dim=-1)
            if forced_slate is not None:
                a = forced_slate[:, len(chosen)].long()
            elif greedy:
                a = log_p.argmax(dim=-1)
            else:
                a = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(-1)
            chosen.append(a)
            log_probs.append(log_p[rows, a])
            entropies.append(_entropy(log_p))
            allowed[rows, a] = False
            step_input = self._chosen_inputs(cands, a.unsqueeze(1))
            prefix = torch.cat([prefix, step_input], dim=1)
        return SlateOutput(
            slate=torch.stack(chosen, dim=1), log_probs=torch.stack(log_probs, dim=1), entropy=torch.stack(entropies, dim=1)
        )
