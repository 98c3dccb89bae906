"""Cross-entropy pretraining of the slate model on logged interactions.

Two targets, both teacher-forced through the same encoder-decoder that PPO
later fine-tunes (the "supervised pretraining, then RL" recipe of RLHF,
Ouyang et al. 2022; and of slate generation from logs, seq2slate, Bello et al. 2018):

* ``target="slate"`` (behaviour cloning): the target of slate position k is the
  logged item at position k, given the logged items before it; the loss is the
  mean over positions of ``-log pi(a_k | s, a_<k)``. All logged steps are used.
* ``target="click"`` (next item): the target is the clicked item, scored at slate
  position 0; steps without a click are skipped. With ``full_catalog=True`` the
  candidates are the whole catalog (e.g. MovieLens next-item over all items).

Users are split into train / validation (no user in both). After every epoch
the model is evaluated on the validation users (NDCG@K of the position-0
ranking, plus HR@K, MRR, CE loss); the best epoch by validation NDCG@K is
kept, checkpointed with ``save_pretrained`` (files written atomically) and
training stops after ``patience`` epochs without improvement.

The validation NDCG@K is single-target for ``target="click"`` (rank of the
clicked item) and multi-target for ``target="slate"`` (binary relevance of the
K logged items). ``val/click_ndcg@K`` (rank of the clicked item) is reported
for both targets whenever the validation users clicked.

With ``config.dp`` set (``DPConfig``), training is user-level DP-SGD (``llm_policy.privacy``): each
step samples training users, clips each one's gradient over all their steps and adds noise; the
(epsilon, delta) spent is logged per epoch (``dp_epsilon``), returned in the metrics and saved in
the best folder's ``config.json`` (``"privacy"``). Without it, nothing changes.

After every epoch the whole training state goes to ``output_dir/last.pt`` (atomically); a run killed
at any point continues from its last finished epoch with ``resume=True`` and ends with the numbers of
an uninterrupted run. Launched with ``torchrun`` the training is data-parallel
(``DistributedDataParallel``, ``llm_policy.distributed``): each rank takes its share of every global
batch, so N processes follow one process with the same ``batch_size`` up to float rounding.

The best folder loads straight into the PPO policy:
``PPO(LLMSlatePolicy, env, policy_kwargs=dict(pretrained_path=result.best_dir))``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.atomic_file import atomic_open, atomic_write_bytes
from llm_policy import distributed
from llm_policy import metrics as M
from llm_policy.config import PretrainConfig, SlatePolicyConfig
from llm_policy.early_stopping import BestOnValidation
from llm_policy.model import OBS_KEYS, SlateModel

__all__ = ["PretrainConfig", "PretrainResult", "LogTensors", "pretrain", "evaluate", "split_users", "STATE_FILE",
           "read_training_state"]

@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    model: SlateModel
    """the model with the best validation weights (eval mode)"""
    metrics: dict[str, Any]
    """``val_before/*`` (untrained), ``val/*`` (best epoch), ``best_epoch``, ``epochs_run``, ``history``"""
    best_dir: Path | None
    """``save_pretrained`` folder of the best model (``output_dir/best``), or None without output_dir"""


@dataclass
class LogTensors:
    """Logged steps as torch tensors (the subset used by pretraining)."""

    obs: dict[str, torch.Tensor]
    slate: torch.Tensor
    """(T, K) logged candidate indices"""
    clicked_position: torch.Tensor
    """(T,) slate position of the click, -1 = none"""
    clicked_item_id: torch.Tensor
    """(T,) catalog id of the clicked item, -1 = none"""
    user_id: np.ndarray
    """(T,) user of each step"""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_logs(cls, logs: Any) -> LogTensors:
        """From ``agents.logs.LoggedData`` or a mapping with the same arrays."""
        if isinstance(logs, str | os.PathLike):
            raise TypeError(f"pretrain takes the logged data, not a path ({str(logs)!r}): load it first with "
                            "agents.logs.load_logs(path)")
        get = (lambda k: logs[k]) if isinstance(logs, Mapping) else (lambda k: getattr(logs, k))
        needed = (*OBS_KEYS, "slate", "clicked_position", "clicked_item_id", "user_id")
        missing = []
        for k in needed:
            try:
                get(k)
            except (KeyError, AttributeError):
                missing.append(k)
        if missing:
            raise ValueError(f"logs lack arrays {missing}; a longrec log has {list(needed)}")
        obs = {k: torch.as_tensor(np.asarray(get(k))) for k in OBS_KEYS}
        meta = get("meta") if (isinstance(logs, Mapping) and "meta" in logs) or hasattr(logs, "meta") else {}
        return cls(
            obs=obs,
            slate=torch.as_tensor(np.asarray(get("slate"))).long(),
            clicked_position=torch.as_tensor(np.asarray(get("clicked_position"))).long(),
            clicked_item_id=torch.as_tensor(np.asarray(get("clicked_item_id"))).long(),
            user_id=np.asarray(get("user_id")),
            meta=dict(meta) if isinstance(meta, Mapping) else {},
        )

    def __len__(self) -> int:
        return int(self.slate.shape[0])

    def select(self, rows: np.ndarray | torch.Tensor) -> LogTensors:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return LogTensors(
            {k: v[idx] for k, v in self.obs.items()},
            self.slate[idx],
            self.clicked_position[idx],
            self.clicked_item_id[idx],
            self.user_id[idx.numpy()],
            self.meta,
        )


def split_users(user_id: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of (train, validation) steps; each user's steps all go to one side."""
    users = np.unique(user_id)
    if len(users) < 2:
        raise ValueError(f"need at least 2 users to split train/validation, the log has {len(users)}")
    rng = np.random.default_rng(seed)
    n_val = min(max(1, round(val_fraction * len(users))), len(users) - 1)
    val_users = rng.permutation(users)[:n_val]
    is_val = np.isin(user_id, val_users)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _rows_for_target(data: LogTensors, target: str) -> np.ndarray:
    if target == "click":
        return np.flatnonzero(data.clicked_position.numpy() >= 0)
    return np.arange(len(data))


def _batch(data: LogTensors, idx: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = {k: v[idx].to(device) for k, v in data.obs.items()}
    return obs, data.slate[idx].to(device), data.clicked_position[idx].to(device), data.clicked_item_id[idx].to(device)


def _history_mask(model: SlateModel, obs: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """(B, N) True = may be ranked: not in the history, or the target itself."""
    b = keep.shape[0]
    seen = torch.zeros(b, model.num_items + 1, dtype=torch.bool, device=keep.device)
    seen.scatter_(1, obs["history_item_ids"].long(), True)
    seen = seen[:, : model.num_items]
    seen[torch.arange(b, device=keep.device), keep] = False
    return ~seen


def _click_targets(slate: torch.Tensor, clicked_position: torch.Tensor, clicked_item_id: torch.Tensor, full_catalog: bool) -> torch.Tensor:
    if full_catalog:
        return clicked_item_id
    return slate.gather(1, clicked_position.clamp(min=0).unsqueeze(1)).squeeze(1)


def _loss(
    model: SlateModel, cfg: PretrainConfig, obs, slate, clicked_position, clicked_item_id,
    item_table: torch.Tensor | None = None,
) -> torch.Tensor:
    if cfg.target == "slate":
        state = model.encode(obs, item_table=item_table)
        return -model.score_slate(state, slate).log_probs.mean()
    target = _click_targets(slate, clicked_position, clicked_item_id, cfg.full_catalog)
    mask = _history_mask(model, obs, target) if cfg.full_catalog and cfg.exclude_history else None
    state = model.encode(obs, full_catalog=cfg.full_catalog, candidate_mask=mask, item_table=item_table)
    return -model.score_slate(state, target.unsqueeze(1)).log_probs.mean()


def _live_item_table(model: SlateModel, text_encoder: Any, texts: Sequence[str], obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Item table whose rows for the batch's items are re-embedded by the text encoder (with gradients)."""
    ids = torch.cat([obs["history_item_ids"].flatten(), obs["candidate_item_ids"].flatten()]).long()
    ids = torch.unique(ids[ids < model.num_items])
    emb = text_encoder.embed([texts[i] for i in ids.tolist()]).to(model.item_embeddings)
    return model.item_embeddings.detach().index_put((ids.to(emb.device),), emb)


@torch.no_grad()
def _refresh_item_embeddings(model: SlateModel, text_encoder: Any, texts: Sequence[str]) -> None:
    model.item_embeddings[: model.num_items] = text_encoder.encode(texts, use_cache=False).to(model.item_embeddings)


@torch.no_grad()
def evaluate(model: SlateModel, data: LogTensors, cfg: PretrainConfig, *, across_ranks: bool = False
             ) -> dict[str, float]:
    """Validation metrics of ``model`` on ``data`` (see the module docstring).

    With ``across_ranks`` (a distributed run, ``llm_policy.distributed``) each rank scores every
    ``world_size``-th row and the per-row sums are all-reduced: every rank returns the same numbers,
    those of all rows (equal to one process's up to float rounding).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    k = cfg.eval_k
    losses, weights, ndcg, hr, mrr, click_ranks = [], [], [], [], [], []
    rows = _rows_for_target(data, cfg.target)
    if across_ranks:
        rows = rows[distributed.rank():: distributed.world_size()]
    for start in range(0, len(rows), cfg.eval_batch_size):
        idx = torch.as_tensor(rows[start : start + cfg.eval_batch_size])
        obs, slate, cpos, citem = _batch(data, idx, device)
        losses.append(float(_loss(model, cfg, obs, slate, cpos, citem)) * len(idx))
        weights.append(len(idx))
        clicked = cpos >= 0
        target = _click_targets(slate, cpos, citem, cfg.full_catalog)
        mask = _history_mask(model, obs, target) if cfg.full_catalog and cfg.exclude_history else None
        state = model.encode(obs, full_catalog=cfg.full_catalog, candidate_mask=mask)
        scores = model.candidate_scores(state)
        if cfg.target == "slate":
            relevant = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, slate, True)
            ndcg.append(M.multi_ndcg_at_k(scores, relevant, k))
            hr.append(M.multi_hit_rate_at_k(scores, relevant, 1))
            mrr.append(M.rank_of_target(scores, slate[:, 0]).float().reciprocal())
        if clicked.any():
            click_ranks.append(M.rank_of_target(scores[clicked], target[clicked]))
    model.train(was_training)
    if across_ranks:
        return _metrics_across_ranks(cfg, sum(losses), sum(weights), click_ranks, ndcg, hr, mrr)
    out: dict[str, float] = {"loss": sum(losses) / max(sum(weights), 1), "num_steps": float(sum(weights))}
    if click_ranks:
        ranks = torch.cat(click_ranks)
        out[f"click_ndcg@{k}"] = float(M.ndcg_at_k(ranks, k).mean())
        out[f"click_hr@{k}"] = float(M.hit_rate_at_k(ranks, k).mean())
        out["click_mrr"] = float(M.mrr(ranks).mean())
        out["click_hr@1"] = float(M.top1_accuracy(ranks).mean())
    if cfg.target == "slate":
        out[f"ndcg@{k}"] = float(torch.cat(ndcg).mean())
        out["top1_in_slate"] = float(torch.cat(hr).mean())
        out["mrr_first_position"] = float(torch.cat(mrr).mean())
    else:
        out[f"ndcg@{k}"] = out.get(f"click_ndcg@{k}", 0.0)
        out[f"hr@{k}"] = out.get(f"click_hr@{k}", 0.0)
        out["mrr"] = out.get("click_mrr", 0.0)
    return out


def _metrics_across_ranks(cfg: PretrainConfig, loss_sum: float, steps: int, click_ranks: list[torch.Tensor],
                          ndcg: list[torch.Tensor], hr: list[torch.Tensor], mrr: list[torch.Tensor]) -> dict[str, float]:
    """:func:`evaluate`'s metrics from every rank's share of the rows: sums and counts all-reduced, then divided."""
    k = cfg.eval_k
    ranks = torch.cat(click_ranks) if click_ranks else torch.zeros(0, dtype=torch.long)
    per_row = {f"click_ndcg@{k}": M.ndcg_at_k(ranks, k), f"click_hr@{k}": M.hit_rate_at_k(ranks, k),
               "click_mrr": M.mrr(ranks), "click_hr@1": M.top1_accuracy(ranks)}
    if cfg.target == "slate":
        for name, values in ((f"ndcg@{k}", ndcg), ("top1_in_slate", hr), ("mrr_first_position", mrr)):
            per_row[name] = torch.cat(values) if values else torch.zeros(0)
    totals = distributed.all_reduce_sum([loss_sum, steps, *(float(v.double().sum()) for v in per_row.values()),
                                         *(v.numel() for v in per_row.values())])
    loss_sum, steps, sums, counts = totals[0], totals[1], totals[2: 2 + len(per_row)], totals[2 + len(per_row):]
    means = {name: total / count for name, total, count in zip(per_row, sums, counts, strict=True) if count > 0}
    out = {"loss": loss_sum / max(steps, 1), "num_steps": steps,
           **{name: value for name, value in means.items() if name.startswith("click_")}}
    if cfg.target == "slate":
        return {**out, **{name: means[name] for name in (f"ndcg@{k}", "top1_in_slate", "mrr_first_position")}}
    return {**out, f"ndcg@{k}": out.get(f"click_ndcg@{k}", 0.0), f"hr@{k}": out.get(f"click_hr@{k}", 0.0),
            "mrr": out.get("click_mrr", 0.0)}


def pretrain(
    logs: Any,
    item_embeddings: Any = None,
    *,
    config: PretrainConfig | None = None,
    model_config: SlatePolicyConfig | None = None,
    model: SlateModel | str | os.PathLike[str] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    text_encoder: Any = None,
    item_texts: Sequence[str] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    catalog: str | None = None,
    resume: bool = False,
) -> PretrainResult:
    """Train the slate model with cross-entropy on logged data.

    Launched with ``torchrun`` (``llm_policy.distributed``), every rank calls this with the same
    arguments and trains one replica in ``DistributedDataParallel``: all ranks draw the same batch
    order, each takes its share of every global batch of ``config.batch_size`` rows (the gradient is
    the one of the whole batch), validation is scored in shares and all-reduced (so every rank stops
    at the same epoch), and only rank 0 writes ``output_dir`` and shows a progress bar.

    Args:
        logs: ``agents.logs.LoggedData`` (``agents.logs.load_logs(path)`` reads a saved one) or a mapping with
            the same arrays.
        item_embeddings: ``(N, d)`` item text embeddings (needed unless ``model`` is given).
        config: training settings.
        model_config: model sizes for a new model (default :class:`SlatePolicyConfig`).
        model: start from this model or ``save_pretrained`` folder instead of a new one.
        output_dir: where ``best/`` (``save_pretrained`` folder) and ``metrics.json`` are written
            (and ``best_text_encoder/`` when the text encoder is fine-tuned).
        text_encoder: the :class:`~llm_policy.text_encoder.ItemTextEncoder` that produced
            ``item_embeddings``; needed with ``config.finetune_text_encoder != "none"``. Each
            step then re-embeds the batch's item texts with gradients; after each epoch the
            catalog is re-encoded into the model's embedding buffer, so the best checkpoint
            carries the fine-tuned embeddings (and PPO later reads them from the cache-like buffer).
        item_texts: the catalog texts (row i = item i), with ``text_encoder``.
        seed: seeds the user split, the batch order and the model initialisation.
        device: ``"cpu"``, ``"cuda"``, ``"auto"``, ... (``llm_policy.device.resolve_device``).
        progress: show a tqdm bar.
        catalog: fingerprint of the catalog the logs come from (``envs.catalog.Catalog.fingerprint``), saved
            with the policy so that it is not served another catalog by mistake (None: keep the model's).
        resume: continue from the training state that each finished epoch leaves in ``output_dir``
            (:data:`STATE_FILE`: model, optimizer, batch order and random state, early stopping, history),
            to the result of an uninterrupted run; without that file, start afresh.

    Returns:
        :class:`PretrainResult` with the best model, metrics and the checkpoint folder (None on ranks > 0).
    """
    config = config or PretrainConfig()
    parallel = distributed.init()
    if parallel:
        _check_data_parallel(config)
    if resume and config.dp.enabled:
        raise ValueError("resume=True does not continue user-level DP pretraining (config.dp): its privacy "
                         "accountant is not checkpointed; rerun it")
    torch_device = distributed.rank_device(device)
    data = LogTensors.from_logs(logs)
    if len(data) == 0:
        raise ValueError("the log is empty")
    torch.manual_seed(seed)  # module initialisers draw from torch's global generator
    model = _initial_model(data, item_embeddings, config, model_config, model).to(torch_device)
    if catalog is not None:
        model.catalog = catalog
    train_rows, val_rows = split_users(data.user_id, config.val_fraction, seed)
    train, val = data.select(train_rows), data.select(val_rows)
    train_idx = _rows_for_target(train, config.target)
    if len(train_idx) == 0:
        raise ValueError(f"no training steps for target={config.target!r} (no clicks logged?)")
    texts = list(item_texts) if config.finetune_text_encoder != "none" and item_texts is not None else []
    if config.dp.enabled:
        return _pretrain_private(model, config, train, val, train_idx, output_dir, seed, torch_device, progress)
    written = Path(output_dir) if output_dir is not None and distributed.is_main() else None  # rank 0 writes
    identity = {"seed": seed, "config": asdict(config), "train_steps": len(train_idx), "val_steps": len(val),
                "num_items": model.num_items}
    state = distributed.from_main(lambda: _load_training_state(written, identity) if resume else None)
    optimizer, params = _optimizer(model, config, text_encoder, texts)
    run = _EarlyStopping(model, config, val, written, text_encoder if texts else None, across_ranks=parallel,
                         state=state["early_stopping"] if state is not None else None)
    gen = torch.Generator().manual_seed(seed)
    if state is not None:
        _restore_training_state(state, model, optimizer, gen, text_encoder if texts else None)
    first_epoch = state["epoch"] + 1 if state is not None else 1
    loss_of = _data_parallel(model, config, torch_device) if parallel else None
    n_batches = -(-len(train_idx) // config.batch_size)
    if config.max_batches_per_epoch is not None:
        n_batches = min(n_batches, config.max_batches_per_epoch)
    bar = tqdm(total=config.epochs * n_batches, initial=(first_epoch - 1) * n_batches,
               desc=f"pretrain ({config.target})", unit="batch", disable=not (progress and distributed.is_main()))
    for epoch in range(first_epoch, config.epochs + 1):
        if run.best.should_stop:  # patience ran out (also at the last epoch a resumed run had finished)
            break
        order = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        train_loss = _train_epoch(model, config, train, order, n_batches, optimizer, params, text_encoder, texts,
                                  torch_device, bar, epoch, run.best.best_score, loss_of)
        if texts:
            _refresh_item_embeddings(model, text_encoder, texts)
        run.after_epoch(epoch, train_loss)
        if output_dir is not None:
            _save_training_state(written, epoch, model, optimizer, gen, run, identity, text_encoder if texts else None)
    bar.close()
    del loss_of  # DDP's gradient hooks go with it: the returned model trains alone again
    result_metrics = run.finish(len(train_idx), asdict(config))
    return PretrainResult(model=model, metrics=result_metrics, best_dir=run.best_dir)


STATE_FILE = "last.pt"
"""the training state :func:`pretrain` writes to ``output_dir`` after every epoch (``resume=True`` reads it)"""
STATE_FORMAT = "longrec-pretrain-state-v1"


def _save_training_state(folder: Path | None, epoch: int, model: SlateModel, optimizer: torch.optim.Optimizer,
                         batch_order: torch.Generator, run: _EarlyStopping, identity: dict[str, Any],
                         text_encoder: Any) -> None:
    """Write :data:`STATE_FILE` to ``folder`` atomically (rank 0; None: write nothing). Every rank must call it:
    the ranks' random states are gathered (each rank's dropout draws its own numbers)."""
    random_states = distributed.gather_object(_random_state(next(model.parameters()).device))
    if folder is None:
        return
    state = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "identity": identity,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "batch_order": batch_order.get_state(),
        "random": random_states,
        "early_stopping": run.state_dict(),
        "text_encoder": text_encoder.model.state_dict() if text_encoder is not None else None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(folder / STATE_FILE, "wb") as handle:
        torch.save(state, handle)


def read_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The training state saved by :func:`pretrain` at ``path`` (``<output_dir>/last.pt``): ``epoch`` (the last
    finished one), ``identity`` (seed, config, data sizes), weights, optimizer, random and early-stopping state."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{path} is not a readable pretraining state ({type(exc).__name__}: {exc}); delete it "
                         "to start afresh") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a pretraining state (format {STATE_FORMAT!r})")
    return state


def _load_training_state(folder: Path | None, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The state in ``folder``, checked against this run's ``identity``; None when there is none."""
    if folder is None or not (folder / STATE_FILE).is_file():
        return None
    state = read_training_state(folder / STATE_FILE)
    for key, value in identity.items():
        if state["identity"].get(key) != value:
            raise ValueError(f"{folder / STATE_FILE} was written by another pretraining ({key}: "
                             f"{state['identity'].get(key)!r}, now {value!r}); resume with the same logs, seed and "
                             "config, or start in another output_dir")
    return state


def _random_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _restore_training_state(state: dict[str, Any], model: SlateModel, optimizer: torch.optim.Optimizer,
                            batch_order: torch.Generator, text_encoder: Any) -> None:
    """Put a saved state back (the early-stopping part is restored by :class:`_EarlyStopping`)."""
    model.load_state_dict(state["model"])
    if text_encoder is not None:
        text_encoder.model.load_state_dict(state["text_encoder"])
    optimizer.load_state_dict(state["optimizer"])
    batch_order.set_state(state["batch_order"])
    saved = state["random"]
    # each rank continues its own random stream when the number of ranks is the one the state was saved with
    mine = saved[distributed.rank()] if len(saved) == distributed.world_size() else saved[0]
    torch.set_rng_state(mine["torch"])
    device = next(model.parameters()).device
    if mine["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], device)


def _check_data_parallel(config: PretrainConfig) -> None:
    """What :func:`pretrain` cannot split across processes."""
    if config.dp.enabled:
        raise ValueError("user-level DP pretraining (config.dp) runs in one process: launch it without torchrun")
    if config.finetune_text_encoder != "none":
        raise ValueError(f"finetune_text_encoder={config.finetune_text_encoder!r} runs in one process (the text "
                         "encoder is not wrapped in DistributedDataParallel): launch it without torchrun")


class _LossOf(torch.nn.Module):
    """A batch's CE loss as a module's ``forward``: the call ``DistributedDataParallel`` wraps."""

    def __init__(self, model: SlateModel, config: PretrainConfig) -> None:
        super().__init__()
        self.model, self.config = model, config

    def forward(self, obs: dict[str, torch.Tensor], slate: torch.Tensor, clicked_position: torch.Tensor,
                clicked_item_id: torch.Tensor) -> torch.Tensor:
        return _loss(self.model, self.config, obs, slate, clicked_position, clicked_item_id)


def _data_parallel(model: SlateModel, config: PretrainConfig, device: torch.device) -> torch.nn.Module:
    """``model``'s loss in ``DistributedDataParallel``: backward averages the ranks' gradients."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # the item table buffer is the same on every rank and fixed while training: no syncing per forward
    # (the flag's name since torch 2.13; before it, broadcast_buffers)
    no_buffer_sync = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel)
                      .parameters else "broadcast_buffers": False}
    return DistributedDataParallel(
        _LossOf(model, config), device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,  # the value head (PPO's) gets no gradient from the CE loss
        **no_buffer_sync,
    )


def _rank_share(batch: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, int, float]:
    """This rank's rows of a global ``batch``, how many of them count, and the weight of their mean loss.

    The batch is cut into ``world_size`` contiguous, nearly equal parts. DDP averages the ranks'
    gradients, so weighting a part's mean loss by ``world_size * len(part) / len(batch)`` makes the
    average the gradient of the whole batch's mean loss (weight 1 when the parts are equal). A rank
    whose part is empty (a last batch with fewer rows than ranks) scores the batch's first row with
    weight 0: it still has to take part in the gradient all-reduce.
    """
    part = torch.tensor_split(batch, world_size)[rank]
    if len(part) == 0:
        return batch[:1], 0, 0.0
    return part, len(part), world_size * len(part) / len(batch)


def _pretrain_private(model: SlateModel, config: PretrainConfig, train: LogTensors, val: LogTensors,
                      train_idx: np.ndarray, output_dir: str | os.PathLike[str] | None, seed: int,
                      device: torch.device, progress: bool) -> PretrainResult:
    """:func:`pretrain` with user-level DP-SGD (``llm_policy.privacy.UserLevelDP``): a step samples training
    users, and each sampled user's loss is the mean over all of their training steps (one clipped gradient)."""
    from llm_policy.privacy import UserLevelDP, record_privacy, used_parameters

    users, owner = np.unique(train.user_id[train_idx], return_inverse=True)
    by_user = np.split(train_idx[np.argsort(owner, kind="stable")], np.cumsum(np.bincount(owner))[:-1])
    # batch_size keeps its meaning in expectation: logged steps per gradient step
    expected_users = max(1.0, config.batch_size * len(users) / len(train_idx))
    n_batches = -(-len(users) // max(1, round(expected_users)))
    if config.max_batches_per_epoch is not None:
        n_batches = min(n_batches, config.max_batches_per_epoch)

    def user_loss(u: int) -> torch.Tensor:
        return _loss(model, config, *_batch(train, torch.as_tensor(by_user[u]), device))

    model.train()
    all_params = [p for p in model.parameters() if p.requires_grad]
    params = used_parameters(user_loss(0), all_params)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    private = UserLevelDP(optimizer, params, config.dp, len(users), expected_users, config.epochs * n_batches, seed)
    run = _EarlyStopping(model, config, val, output_dir, None)
    bar = tqdm(total=config.epochs * n_batches, desc=f"pretrain ({config.target}, user-level DP)", unit="batch",
               disable=not progress)
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses = []
        for _ in range(n_batches):
            step = private.step(user_loss)
            if step.users:
                losses.append(step.loss)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses) if losses else float('nan'):.4f}")
        epsilon = private.epsilon()
        bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses) if losses else float('nan'):.4f}", epsilon=f"{epsilon:.2f}")
        if run.after_epoch(epoch, float(np.mean(losses)) if losses else float("nan"), {"dp_epsilon": epsilon}):
            break
    bar.close()
    report = private.report()
    result_metrics = run.finish(len(train_idx), asdict(config), report)
    if run.best_dir is not None:
        record_privacy(run.best_dir, report)
    return PretrainResult(model=model, metrics=result_metrics, best_dir=run.best_dir)


def _initial_model(data: LogTensors, item_embeddings: Any, config: PretrainConfig,
                   model_config: SlatePolicyConfig | None, model: SlateModel | str | os.PathLike[str] | None
                   ) -> SlateModel:
    """A new model over ``item_embeddings`` (or ``model`` / its folder), sized for the log's observations."""
    if model is None:
        if item_embeddings is None:
            raise ValueError("pretrain needs item_embeddings (N, d) or model=<SlateModel or save_pretrained folder>")
        model = SlateModel(model_config or SlatePolicyConfig(), item_embeddings, int(data.obs["context"].shape[1]))
    elif not isinstance(model, SlateModel):
        model = SlateModel.from_pretrained(model)
    k_logged = int(data.slate.shape[1])
    if config.target == "slate" and k_logged > model.config.max_slate_size:
        raise ValueError(f"logged slates have K={k_logged} > model max_slate_size={model.config.max_slate_size}")
    model.obs_sizes = {
        "N": model.num_items,
        "H": int(data.obs["history_item_ids"].shape[1]),
        "C": int(data.obs["candidate_item_ids"].shape[1]),
        "D": int(data.obs["context"].shape[1]),
        "K": k_logged,
    }
    return model


def _optimizer(model: SlateModel, config: PretrainConfig, text_encoder: Any, texts: Sequence[str]
               ) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """AdamW over the model's trainable weights (and the text encoder's, when it is fine-tuned); and those weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params, "lr": config.learning_rate}]
    if config.finetune_text_encoder != "none":
        if text_encoder is None or not texts:
            raise ValueError("finetune_text_encoder needs text_encoder=<ItemTextEncoder> and item_texts=<catalog texts>")
        if len(texts) != model.num_items or text_encoder.dim != model.item_dim:
            raise ValueError(
                f"text encoder / texts must match the model: {len(texts)} texts of dim {text_encoder.dim} "
                f"vs {model.num_items} items of dim {model.item_dim}"
            )
        if text_encoder.finetuning == "none":
            text_params = text_encoder.enable_lora() if config.finetune_text_encoder == "lora" else text_encoder.enable_full_finetuning()
        else:
            text_params = [p for p in text_encoder.model.parameters() if p.requires_grad]
        groups.append({"params": text_params, "lr": config.text_encoder_lr})
        params = params + text_params
    return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay), params


def _train_epoch(model: SlateModel, config: PretrainConfig, train: LogTensors, order: torch.Tensor, n_batches: int,
                 optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], text_encoder: Any,
                 texts: Sequence[str], device: torch.device, bar: Any, epoch: int, best_score: float,
                 loss_of: torch.nn.Module | None = None) -> float:
    """One pass of ``n_batches`` gradient steps over ``order`` (row indices); returns the mean training loss.

    With ``loss_of`` (the loss in ``DistributedDataParallel``) each step trains on this rank's share of
    the global batch (:func:`_rank_share`) and the returned mean is over every rank's rows.
    """
    model.train()
    total, count = 0.0, 0
    for b in range(n_batches):
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]
        rows, weight = len(idx), 1.0
        if loss_of is not None:
            idx, rows, weight = _rank_share(idx, distributed.rank(), distributed.world_size())
        obs, slate, cpos, citem = _batch(train, idx, device)
        if loss_of is None:
            table = _live_item_table(model, text_encoder, texts, obs) if texts else None
            loss = _loss(model, config, obs, slate, cpos, citem, table)
        else:
            loss = loss_of(obs, slate, cpos, citem)
        optimizer.zero_grad(set_to_none=True)
        (loss if loss_of is None else loss * weight).backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        total += float(loss.detach()) * rows
        count += rows
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{total / max(count, 1):.4f}", best=f"{best_score:.4f}")
    if loss_of is not None:
        total, count = distributed.all_reduce_sum([total, count])
    return total / max(count, 1)


class _EarlyStopping:
    """Validation after each epoch: the best model by NDCG@K is kept (``BestOnValidation``) and saved."""

    def __init__(self, model: SlateModel, config: PretrainConfig, val: LogTensors,
                 output_dir: str | os.PathLike[str] | None, text_encoder: Any, *, across_ranks: bool = False,
                 state: dict[str, Any] | None = None) -> None:
        """``across_ranks``: validation in shares, all-reduced (``evaluate``); ``state``: a :meth:`state_dict`
        to continue from (a resumed run: no evaluation of the starting model, ``best/`` left as it is)."""
        self.model, self.config, self.val, self.across_ranks = model, config, val, across_ranks
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.text_encoder = text_encoder  # saved next to the best model when it is fine-tuned
        self.key = f"ndcg@{config.eval_k}"
        self.best_dir = self.output_dir / "best" if self.output_dir is not None else None
        if state is not None:
            self.before, self.best_val = state["before"], state["best_val"]
            self.history, self.epochs_run = state["history"], state["epochs_run"]
            self.best = BestOnValidation(model, config.patience)
            self.best.load_state_dict(state["best"])
            return
        self.before = evaluate(model, val, config, across_ranks=across_ranks)
        self.best = BestOnValidation(model, config.patience, initial_score=self.before[self.key])
        self.best_val = self.before
        self.history: list[dict[str, float]] = []
        self.epochs_run = 0
        if self.best_dir is not None:
            model.save_pretrained(self.best_dir)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to stop and report as an uninterrupted one."""
        return {"before": self.before, "best_val": self.best_val, "history": self.history,
                "epochs_run": self.epochs_run, "best": self.best.state_dict()}

    def after_epoch(self, epoch: int, train_loss: float, extra: dict[str, float] | None = None) -> bool:
        """Record epoch ``epoch`` (and ``extra`` values in its history row); True when training should stop."""
        val_metrics = evaluate(self.model, self.val, self.config, across_ranks=self.across_ranks)
        self.epochs_run = epoch
        self.history.append({"epoch": epoch, "train/loss": train_loss, **{f"val/{k}": v for k, v in val_metrics.items()},
                             **(extra or {})})
        if self.best.record(val_metrics[self.key], epoch):
            self.best_val = val_metrics
            if self.best_dir is not None:
                self.model.save_pretrained(self.best_dir)
                if self.text_encoder is not None:
                    self.text_encoder.model.save_pretrained(self.output_dir / "best_text_encoder")
                    self.text_encoder.tokenizer.save_pretrained(self.output_dir / "best_text_encoder")
        return self.best.should_stop

    def finish(self, train_steps: int, config: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load the best weights (eval mode); the result metrics (with ``extra``), written to ``output_dir/metrics.json``."""
        self.best.restore_best()
        metrics: dict[str, Any] = {
            **{f"val_before/{k}": v for k, v in self.before.items()},
            **{f"val/{k}": v for k, v in self.best_val.items()},
            "best_epoch": self.best.best_epoch,
            "epochs_run": self.epochs_run,
            "train_steps": train_steps,
            "val_users": int(len(np.unique(self.val.user_id))),
            **(extra or {}),
            "config": config,
            "history": self.history,
        }
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
        return metrics
