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

from envs.atomic_file import atomic_write_bytes
from llm_policy import metrics as M
from llm_policy.config import PretrainConfig, SlatePolicyConfig
from llm_policy.device import resolve_device
from llm_policy.early_stopping import BestOnValidation
from llm_policy.model import OBS_KEYS, SlateModel

__all__ = ["PretrainConfig", "PretrainResult", "LogTensors", "pretrain", "evaluate", "split_users"]

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
def evaluate(model: SlateModel, data: LogTensors, cfg: PretrainConfig) -> dict[str, float]:
    """Validation metrics of ``model`` on ``data`` (see the module docstring)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    k = cfg.eval_k
    losses, weights, ndcg, hr, mrr, click_ranks = [], [], [], [], [], []
    rows = _rows_for_target(data, cfg.target)
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
) -> PretrainResult:
    """Train the slate model with cross-entropy on logged data.

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

    Returns:
        :class:`PretrainResult` with the best model, metrics and the checkpoint folder.
    """
    config = config or PretrainConfig()
    torch_device = resolve_device(device)
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
    optimizer, params = _optimizer(model, config, text_encoder, texts)
    run = _EarlyStopping(model, config, val, output_dir, text_encoder if texts else None)
    n_batches = -(-len(train_idx) // config.batch_size)
    if config.max_batches_per_epoch is not None:
        n_batches = min(n_batches, config.max_batches_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=config.epochs * n_batches, desc=f"pretrain ({config.target})", unit="batch", disable=not progress)
    for epoch in range(1, config.epochs + 1):
        order = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        train_loss = _train_epoch(model, config, train, order, n_batches, optimizer, params, text_encoder, texts,
                                  torch_device, bar, epoch, run.best.best_score)
        if texts:
            _refresh_item_embeddings(model, text_encoder, texts)
        if run.after_epoch(epoch, train_loss):
            break
    bar.close()
    result_metrics = run.finish(len(train_idx), asdict(config))
    return PretrainResult(model=model, metrics=result_metrics, best_dir=run.best_dir)


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
                 texts: Sequence[str], device: torch.device, bar: Any, epoch: int, best_score: float) -> float:
    """One pass of ``n_batches`` gradient steps over ``order`` (row indices); returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for b in range(n_batches):
        idx = order[b * config.batch_size : (b + 1) * config.batch_size]
        obs, slate, cpos, citem = _batch(train, idx, device)
        table = _live_item_table(model, text_encoder, texts, obs) if texts else None
        loss = _loss(model, config, obs, slate, cpos, citem, table)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{total / count:.4f}", best=f"{best_score:.4f}")
    return total / max(count, 1)


class _EarlyStopping:
    """Validation after each epoch: the best model by NDCG@K is kept (``BestOnValidation``) and saved."""

    def __init__(self, model: SlateModel, config: PretrainConfig, val: LogTensors,
                 output_dir: str | os.PathLike[str] | None, text_encoder: Any) -> None:
        self.model, self.config, self.val = model, config, val
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.text_encoder = text_encoder  # saved next to the best model when it is fine-tuned
        self.key = f"ndcg@{config.eval_k}"
        self.before = evaluate(model, val, config)
        self.best = BestOnValidation(model, config.patience, initial_score=self.before[self.key])
        self.best_val = self.before
        self.history: list[dict[str, float]] = []
        self.epochs_run = 0
        self.best_dir = self.output_dir / "best" if self.output_dir is not None else None
        if self.best_dir is not None:
            model.save_pretrained(self.best_dir)

    def after_epoch(self, epoch: int, train_loss: float, extra: dict[str, float] | None = None) -> bool:
        """Record epoch ``epoch`` (and ``extra`` values in its history row); True when training should stop."""
        val_metrics = evaluate(self.model, self.val, self.config)
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
