"""Tiny randomly initialised BERT encoders for tests and CPU benchmarks.

A BERT (Devlin et al. 2019) config with a handful of layers and a small
word-piece vocabulary built from the words of the texts to encode, saved as a
normal Hugging Face model folder so :class:`~llm_policy.text_encoder.ItemTextEncoder`
loads it exactly like a real checkpoint (``AutoModel``/``AutoTokenizer``,
``local_files_only=True``). Nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["make_tiny_bert"]

_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def make_tiny_bert(
    path: str | os.PathLike[str],
    texts: Iterable[str] = (),
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> Path:
    """Write a random tiny BERT model + tokenizer to ``path`` and return the folder.

    The vocabulary holds the special tokens, the lower-cased words and punctuation
    of ``texts``, the letters a-z and digits (so any text tokenises without [UNK]
    storms).
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words: set[str] = set("abcdefghijklmnopqrstuvwxyz0123456789.,!?:;'-()")
    for t in texts:
        words.update(re.findall(r"\w+|[^\w\s]", t.lower()))
    vocab = list(_SPECIAL) + sorted(words)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    try:  # transformers >= 5 takes the vocabulary itself
        tokenizer = BertTokenizerFast(
            vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True, model_max_length=max_position_embeddings
        )
    except TypeError:  # transformers 4.x
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=max_position_embeddings)
    tokenizer.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
    )
    torch.manual_seed(seed)  # BertModel's initialiser draws from the global torch generator
    BertModel(config).save_pretrained(path)
    return path
