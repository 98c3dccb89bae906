"""Language-model slate policy for longrec.

An item text encoder (Sentence-BERT style mean pooling over a Hugging Face
encoder; default all-MiniLM-L6-v2) feeds a transformer *state encoder* over
the user's history tokens; a GPT-2 style *slate decoder* with cross-attention
writes the slate position by position with pointer scores over the candidates
(seq2slate / Pointer Networks). ``LLMSlatePolicy`` wraps it as a
Stable-Baselines3 actor-critic policy; ``pretrain`` trains it with
cross-entropy on logged data, ``next_item`` with full-catalog cross-entropy on
user sequences; ``early_stopping`` keeps their best validation epoch;
``metrics`` holds the offline ranking metrics.

Names are imported lazily, so ``import llm_policy.metrics`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SlatePolicyConfig": "llm_policy.config",
    "ItemTextEncoder": "llm_policy.text_encoder",
    "default_model_path": "llm_policy.text_encoder",
    "StateEncoder": "llm_policy.state_encoder",
    "SlateDecoder": "llm_policy.slate_decoder",
    "SlateOutput": "llm_policy.slate_decoder",
    "SlateModel": "llm_policy.model",
    "SlateDistribution": "llm_policy.distribution",
    "LLMSlatePolicy": "llm_policy.sb3_policy",
    "PretrainConfig": "llm_policy.pretrain",
    "pretrain": "llm_policy.pretrain",
    "LLMNextItemConfig": "llm_policy.config",
    "LLMScorer": "llm_policy.next_item",
    "train_llm_next_item": "llm_policy.next_item",
    "BestOnValidation": "llm_policy.early_stopping",
    "make_tiny_bert": "llm_policy.tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llm_policy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
