"""Next-item training of the LLM slate policy: full-catalog cross-entropy on user sequences.

The policy's state encoder reads a user's most recent items (their text embeddings, plus optional
learned id vectors), and slate position 0 of its pointer decoder scores the *whole catalog* as
candidates, so the policy is trained and ranked as a sequential recommender (SASRec, Kang and
McAuley, ICDM 2018; full cross-entropy over all items as in Klenitskiy and Vasilev, RecSys 2023):

* :func:`train_llm_next_item` trains on the training sequences, one window of the last ``H + 1``
  items per user with every position a target (``objective="all_positions"``, causal encoder) or
  one example per (user, position) (``"next_item"``), keeps the epoch with the best validation
  NDCG@10 (:class:`llm_policy.early_stopping.BestOnValidation`) and then picks the text-match
  weights (:func:`calibrate_text_match`) and the features-view weight (:func:`calibrate_features_view`:
  how much of the logits the model gives with no id vectors at all to add to its usual ones) on the
  validation users;
* :class:`LLMScorer` scores the whole catalog for a batch of histories (a next-item scorer, as an
  offline leave-one-out protocol ranks them).

With ``dp`` (``llm_policy.config.DPConfig``), :func:`train_llm_next_item` trains with user-level DP-SGD
(``llm_policy.privacy``): one user's training window is one clipped gradient, users are Poisson-sampled
and the (epsilon, delta) spent is recorded per epoch (``dp_epsilon``) and in the log (``"privacy"``).

The validation users are given as histories and targets (``valid_histories``, ``valid_targets``);
ranks exclude each user's history items (``llm_policy.metrics.target_ranks``). The trained
``SlateModel`` is saved with ``save_pretrained`` and loads into ``LLMSlatePolicy`` for PPO.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from llm_policy.config import TRAINING_WINDOWS, DPConfig, LLMNextItemConfig, TrainingWindows
from llm_policy.device import resolve_device
from llm_policy.early_stopping import BestOnValidation
from llm_policy.metrics import full_catalog_ranks, ranking_metrics, target_ranks
from llm_policy.model import SlateModel
from llm_policy.privacy import UserLevelDP, used_parameters
from llm_policy.slate_decoder import PreparedCandidates

__all__ = [
    "LLMNextItemConfig",
    "LLMScorer",
    "TextMatchCalibration",
    "TextMatchSetting",
    "all_positions_loss",
    "calibrate_features_view",
    "calibrate_text_match",
    "catalog_keys",
    "catalog_logits",
    "history_observation",
    "llm_training_windows",
    "sequence_windows",
    "train_llm_next_item",
    "training_examples",
]


def history_observation(
    histories: Sequence[np.ndarray], num_items: int, history_length: int, context_dim: int
) -> dict[str, torch.Tensor]:
    """Observation dict (the simulator contract) of item histories: last H items, all clicked, left-padded."""
    b = len(histories)
    ids = np.full((b, history_length), num_items, dtype=np.int64)
    for row, hist in enumerate(histories):
        tail = np.asarray(hist[-history_length:], dtype=np.int64)
        if tail.size:
            ids[row, history_length - tail.size :] = tail
    clicked = ids != num_items
    return {
        "history_item_ids": torch.from_numpy(ids),
        "history_responses": torch.from_numpy(clicked.astype(np.int64) * 2),
        "history_consumption": torch.from_numpy(clicked.astype(np.float32)),
        "candidate_item_ids": torch.zeros(b, 1, dtype=torch.long),
        "context": torch.zeros(b, context_dim),
    }


def catalog_logits(
    model: SlateModel,
    obs: dict[str, torch.Tensor],
    keys: torch.Tensor | None = None,
    feature_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, N)`` next-item logits: slate position 0 of the decoder, pointer-scored over the whole catalog.

    Same numbers as ``model.encode(obs, full_catalog=True)`` + ``model.candidate_scores``, but only
    the catalog's pointer keys are projected (the decoder's item *inputs* are not needed for
    position 0), and ``keys`` (:func:`catalog_keys`) can be reused across batches at evaluation time.
    With ``model.config.features_view_weight`` w > 0 (and id vectors), w times the logits of the
    features view (the same, inside :meth:`SlateModel.features_only`; ``feature_keys`` its keys) are added.
    """
    logits = _one_view_logits(model, obs, keys)
    weight = model.config.features_view_weight
    if weight == 0 or model.item_id_embedding is None:
        return logits
    with model.features_only():
        return logits + weight * _one_view_logits(model, obs, feature_keys)


def catalog_keys(model: SlateModel) -> torch.Tensor:
    """``(N, d)`` pointer keys of the whole catalog, as the model represents its items now."""
    return model.decoder.key_proj(model.item_repr(None))


def _one_view_logits(model: SlateModel, obs: dict[str, torch.Tensor], keys: torch.Tensor | None) -> torch.Tensor:
    enc = model.encode(obs)
    keys = catalog_keys(model) if keys is None else keys
    enc.candidates = model.with_text_match(PreparedCandidates(keys=keys, inputs=keys, mask=None), enc.last_clicked)
    return model.candidate_scores(enc)


@dataclass
class LLMScorer:
    """A trained ``SlateModel`` scoring the whole catalog for item histories (a next-item scorer).

    The catalog's pointer keys are computed once, at the first :meth:`score`, and reused: make a new
    scorer after the weights change.
    """

    model: SlateModel
    history_length: int
    context_dim: int
    _keys: torch.Tensor | None = None
    _feature_keys: torch.Tensor | None = None

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B, N) next-item logits of B histories of item ids, oldest first (the model is put in eval mode)."""
        self.model.eval()
        if self._keys is None:
            self._keys = catalog_keys(self.model)
            if self.model.config.features_view_weight > 0:  # only the features view reads them
                with self.model.features_only():
                    self._feature_keys = catalog_keys(self.model)
        obs = history_observation(histories, self.model.num_items, self.history_length, self.context_dim)
        device = self._keys.device
        obs = {k: v.to(device) for k, v in obs.items()}
        return catalog_logits(self.model, obs, self._keys, self._feature_keys).float().cpu().numpy()


def training_examples(
    train_sequences: Sequence[np.ndarray], *, next_items: int = 1, recent_positions: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(user, t) pairs of next-item training examples: history ``train_sequences[u][:t]``, targets
    ``train_sequences[u][t:t+m]`` (each user's training items, oldest first).

    ``t`` runs over ``1..len - m`` (only the last ``recent_positions`` of them when given); windows of
    ``m > 1`` targets that repeat an item are dropped.
    """
    m = next_items
    users = np.concatenate([np.full(max(len(s) - m, 0), u) for u, s in enumerate(train_sequences)]).astype(np.int64)
    positions = np.concatenate([np.arange(1, max(len(s) - m + 1, 1)) for s in train_sequences]).astype(np.int64)
    if recent_positions is not None:
        last = np.concatenate([np.full(max(len(s) - m, 0), len(s) - m) for s in train_sequences])
        keep = positions > last - recent_positions
        users, positions = users[keep], positions[keep]
    if m > 1 and users.size:
        # teacher forcing masks items already in the slate, so a window must not repeat an item
        distinct = np.array([len(set(train_sequences[u][t : t + m].tolist())) == m for u, t in zip(users, positions, strict=True)])
        users, positions = users[distinct], positions[distinct]
    if users.size == 0:
        raise ValueError(f"no training sequence has >= {m + 1} items")
    return users, positions


def sequence_windows(sequences: Sequence[np.ndarray], width: int, mode: TrainingWindows = "tail") -> list[np.ndarray]:
    """Training windows of at most ``width`` items cut from each sequence of >= 2 items, oldest first.

    ``"tail"``: each sequence's last ``width`` items (SASRec's reference code). ``"chunks"``: windows cut
    from the end, each starting where the next one's inputs start (consecutive windows share one item),
    so every item of a long sequence is a target exactly once.
    """
    if mode not in TRAINING_WINDOWS:
        raise ValueError(f"window mode must be one of {TRAINING_WINDOWS}, got {mode!r}")
    if width < 2:
        raise ValueError(f"a window needs width >= 2 (an input and a target), got {width}")
    windows = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            windows.append(np.asarray(seq[max(0, end - width) : end], dtype=np.int64))
            end = end - (width - 1) if mode == "chunks" else 0
    if not windows:
        raise ValueError("no training sequence has >= 2 items")
    return windows


def llm_training_windows(
    train_sequences: Sequence[np.ndarray], num_items: int, history_length: int, mode: TrainingWindows = "tail"
) -> np.ndarray:
    """``(W, H + 1)`` int64 windows of the training sequences (:func:`sequence_windows`), left-padded with N.

    Inputs are ``[:, :-1]``, targets ``[:, 1:]`` (SASRec's windows, with the catalog's padding id N).
    """
    width = history_length + 1
    rows = sequence_windows(train_sequences, width, mode)
    out = np.full((len(rows), width), num_items, dtype=np.int64)
    for row, seq in enumerate(rows):
        out[row, width - len(seq) :] = seq
    return out


def all_positions_loss(
    model: SlateModel,
    windows: torch.Tensor,
    context_dim: int,
    keys: torch.Tensor | None = None,
    *,
    future_targets: int = 1,
    future_decay: float = 1.0,
) -> tuple[torch.Tensor, int]:
    """Mean full-catalog cross-entropy of every next item of a batch of windows, one encoder pass.

    ``windows (B, H + 1)``: item ids, left-padded with N (:func:`llm_training_windows`). The causal
    state encoder reads the inputs ``windows[:, :-1]`` (context token first) once; every history
    token t with a valid next item becomes one slate-decoder query at position 0 whose start token is
    the running-mean pooled state up to t and whose cross-attention sees the valid tokens <= t (the
    context token included), so each query scores exactly as the single-target model would on the
    prefix ending at t (same token positions). Returns ``(loss, number of queries)``.

    ``future_targets`` k > 1: each query's target is the soft label over its next k items inside the
    window, item ``j + 1`` steps ahead weighted ``future_decay ** j`` (normalised per query), i.e. the
    mean over queries of ``sum_j w_j * CE(item t + 1 + j) / sum_j w_j``; k = 1 is the plain next-item loss.
    """
    if not model.config.causal_encoder:
        raise ValueError("all_positions_loss needs a model with config.causal_encoder=True")
    n = model.num_items
    device = model.item_embeddings.device
    windows = windows.to(device)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    b, h = inputs.shape
    clicked = inputs != n
    obs = {
        "history_item_ids": inputs,
        "history_responses": clicked.long() * 2,
        "history_consumption": clicked.float(),
        "candidate_item_ids": torch.zeros(b, 1, dtype=torch.long, device=device),
        "context": torch.zeros(b, context_dim, device=device),
    }
    enc = model.encode(obs, all_positions=True)  # pooled (B, H + 1, d): token 0 = context, token t = item t - 1
    query = clicked & (targets != n)  # history token t = inputs[:, t - 1] predicts targets[:, t - 1]
    rows, cols = query.nonzero(as_tuple=True)
    dec = model.decoder
    # The H queries of a window go through GPT-2 as one sequence whose tokens cannot see each other
    # (self-attention mask = identity) and all sit at slate position 0, so each is exactly a
    # one-position decoder pass; the window's memory is projected once for its H queries.
    # Query t (history token t + 1) cross-attends to the valid tokens <= t + 1.
    steps = torch.arange(h, device=device)
    self_mask = torch.eye(h, dtype=torch.bool, device=device).expand(b, 1, h, h)
    visible = enc.mask.unsqueeze(1) & (torch.arange(h + 1, device=device).unsqueeze(0) <= steps.unsqueeze(1) + 1)
    hidden = dec.gpt(
        inputs_embeds=dec.start(enc.pooled[:, 1:].reshape(b * h, -1)).reshape(b, h, -1),
        attention_mask=self_mask,
        position_ids=torch.zeros(b, h, dtype=torch.long, device=device),
        encoder_hidden_states=dec.memory_proj(enc.states),
        encoder_attention_mask=visible.unsqueeze(1),
        use_cache=False,
    ).last_hidden_state[rows, cols].unsqueeze(1)
    if keys is None:
        keys = dec.key_proj(model.item_repr(None))
    cands = model.with_text_match(PreparedCandidates(keys=keys, inputs=keys, mask=None), inputs[rows, cols])
    logits = dec.pointer_logits(hidden, cands).squeeze(1)
    if future_targets == 1:
        return torch.nn.functional.cross_entropy(logits, targets[rows, cols]), int(rows.numel())
    return _future_targets_loss(logits, targets, rows, cols, n, future_targets, future_decay), int(rows.numel())


def _future_targets_loss(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                         padding: int, k: int, decay: float) -> torch.Tensor:
    """Soft-label cross-entropy of queries ``(rows, cols)`` on ``targets[row, col + j]``, j < k, weights ``decay ** j``
    over the items inside the window (not ``padding``); j = 0 is always a valid target."""
    width = targets.shape[1]
    ahead = torch.arange(k, device=targets.device)
    pos = cols.unsqueeze(1) + ahead  # (Q, k)
    future = targets[rows.unsqueeze(1), pos.clamp(max=width - 1)]
    weights = (decay ** ahead.float()) * ((pos < width) & (future != padding)).float()
    weights = weights / weights.sum(dim=1, keepdim=True)
    nll = -logits.log_softmax(dim=-1).gather(1, future.clamp(max=padding - 1))
    return (nll * weights).sum(dim=1).mean()


def _next_item_loss(
    model: SlateModel,
    train_sequences: Sequence[np.ndarray],
    users: np.ndarray,
    positions: np.ndarray,
    config: LLMNextItemConfig,
    device: Any,
) -> torch.Tensor:
    """Cross-entropy of (user, t) examples: history ``train[u][t-H:t]``, targets ``train[u][t:t+m]``."""
    m, h = config.next_items, config.history_length
    hists = [train_sequences[u][max(0, t - h) : t] for u, t in zip(users, positions, strict=True)]
    targets = torch.as_tensor(np.stack([train_sequences[u][t : t + m] for u, t in zip(users, positions, strict=True)]))
    obs = history_observation(hists, model.num_items, h, config.context_dim)
    obs = {k: v.to(device) for k, v in obs.items()}
    targets = targets.to(device)
    if m == 1:
        return torch.nn.functional.cross_entropy(catalog_logits(model, obs), targets[:, 0])
    state = model.encode(obs, full_catalog=True)
    return -model.score_slate(state, targets).log_probs.mean()


def train_llm_next_item(
    train_sequences: Sequence[np.ndarray],
    valid_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    item_embeddings: torch.Tensor | np.ndarray,
    config: LLMNextItemConfig | None = None,
    *,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    dp: DPConfig | None = None,
) -> tuple[SlateModel, dict[str, Any]]:
    """Train the LLM policy's encoder + decoder to predict each next training item (full-catalog CE).

    Args:
        train_sequences: each user's training items, oldest first (item ids ``0..N-1``).
        valid_histories, valid_targets: the validation users' model inputs and next items; their
            NDCG@10 over the full catalog (history items excluded) picks the epoch and the
            text-match weights.
        item_embeddings: ``(N, d)`` item features (text embedding first).
        config: model and training settings (None: ``LLMNextItemConfig()``).
        seed: seeds initialisation, example sampling and dropout.
        device: ``"cpu"``, ``"cuda"``, ``"auto"``, ...
        progress: called with one line per epoch.
        dp: user-level differential privacy (None or a disabled ``DPConfig``: none); needs
            ``objective="all_positions"`` (a user's window is the unit that is clipped). Each step then
            samples users at rate ``batch_size / users``; ``grad_clip`` is replaced by ``dp.max_grad_norm``.

    ``objective="next_item"``: examples are all (user, position t >= 1) pairs of the training
    sequences: the history is the last H items before t, the target the item at t.
    ``objective="all_positions"``: one window of the last H + 1 training items per user, every
    position trained in one causal encoder pass (:func:`all_positions_loss`). Returns the model with
    the best validation NDCG@10 (text-match weights then calibrated; with ``config.ema_decay``, the
    moving average of the weights is what is validated and returned) and a log dict.
    """
    config = config or LLMNextItemConfig()
    private = dp is not None and dp.enabled
    for key, needed in (("objective", "all_positions"), ("windows", "tail")):
        if private and getattr(config, key) != needed:
            raise ValueError(f"user-level DP needs {key}={needed!r} (one window per user), got {getattr(config, key)!r}")
    start = time.perf_counter()
    torch_device = resolve_device(device)
    torch.manual_seed(seed)  # module initialisers and dropout draw from the global generator
    model = SlateModel(config.model, item_embeddings, config.context_dim).to(torch_device)
    _check_item_ids(model.num_items, train_sequences, valid_targets)
    if model.item_id_embedding is not None:
        model.restrict_item_ids(_item_counts(train_sequences, model.num_items) >= config.id_min_count)
    batches = _Batches(train_sequences, model.num_items, config, np.random.default_rng(seed))
    # The features-only text-match offset is not trained: cross-entropy would fit it to the rare
    # items' likelihood, and calibrate_text_match sets it for the ranking afterwards anyway.
    params = [p for p in model.parameters() if p.requires_grad and p is not model.text_match_offset]
    if private:
        model.train()
        params = used_parameters(batches.user_loss(model, 0), params)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    user_dp = UserLevelDP(optimizer, params, dp, batches.units, batches.batch_size,
                          config.max_epochs * batches.steps_per_epoch, seed) if private else None
    scheduler = None
    if config.lr_decay_patience is not None:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=config.lr_decay_patience, threshold=0.0
        )
    # With ema_decay, validation scores, early stopping keeps and training returns the weights' moving average.
    averaged = None if config.ema_decay is None else AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    evaluated = model if averaged is None else averaged.module

    def after_step() -> None:
        if averaged is not None:
            averaged.update_parameters(model)

    stopper = BestOnValidation(evaluated, config.patience, time_budget_s=config.time_budget_s, start=start)
    epoch, targets_seen = 0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        total = 0.0
        if user_dp is not None:
            total, count = batches.private_epoch(model, user_dp, after_step)
            targets_seen += count
        for _ in range(batches.steps_per_epoch if user_dp is None else 0):
            loss, count = batches.next_loss(model, train_sequences, torch_device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            after_step()
            total += float(loss.detach())
            targets_seen += count
        scorer = LLMScorer(evaluated, config.history_length, config.context_dim)
        valid = ranking_metrics(full_catalog_ranks(scorer.score, valid_histories, valid_targets, model.num_items))
        record = {"epoch": float(epoch), "train_loss": total / batches.steps_per_epoch,
                  "lr": optimizer.param_groups[0]["lr"], **{f"valid_{k}": v for k, v in valid.items()}}
        if user_dp is not None:
            record["dp_epsilon"] = user_dp.epsilon()
        history.append(record)
        if progress is not None:
            progress("llm " + " ".join(f"{k}={v:.4g}" for k, v in record.items()) + f" t={time.perf_counter() - start:.0f}s")
        stopper.record(valid["ndcg@10"], epoch)
        if scheduler is not None:
            scheduler.step(valid["ndcg@10"])
        if stopper.should_stop:
            break
    stopper.restore_best()
    model = evaluated
    valid_ndcg, text_match = _calibrate_after_training(model, valid_histories, valid_targets, config, stopper, progress)
    features_view = {}
    if model.item_id_embedding is not None and config.features_view_grid:
        features_view = calibrate_features_view(model, valid_histories, valid_targets, config.history_length,
                                                config.context_dim, config.features_view_grid)
        valid_ndcg = features_view[model.config.features_view_weight]
        if progress is not None:
            progress(f"llm features-view weight: {model.config.features_view_weight:g}; valid NDCG@10 {valid_ndcg:.4f} "
                     f"(id view alone: {features_view.get(0.0, float('nan')):.4f})")
    log = {
        "epochs": epoch,
        "best_epoch": stopper.best_epoch,
        "best_valid_ndcg@10": valid_ndcg,
        "text_match_valid_ndcg@10": {",".join(f"{v:g}" for v in setting): row for setting, row in text_match.items()},
        "features_view_valid_ndcg@10": {f"{weight:g}": ndcg for weight, ndcg in features_view.items()},
        "seconds": time.perf_counter() - start,
        "examples_seen": epoch * batches.steps_per_epoch * batches.batch_size,
        "targets_seen": targets_seen,
        "history": history,
    }
    if user_dp is not None:
        log["privacy"] = user_dp.report()
    return model, log


def _item_counts(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """(N,) int64 occurrences of each item in ``sequences``."""
    if not sequences:
        return np.zeros(num_items, dtype=np.int64)
    return np.bincount(np.concatenate(sequences), minlength=num_items).astype(np.int64)


def _check_item_ids(num_items: int, train_sequences: Sequence[np.ndarray], valid_targets: np.ndarray) -> None:
    ids = np.concatenate([np.asarray(s, dtype=np.int64).ravel() for s in train_sequences] + [np.asarray(valid_targets).ravel()])
    if ids.size and (ids.min() < 0 or ids.max() >= num_items):
        raise ValueError(f"item ids must lie in [0, {num_items}) (the item_embeddings rows), got {ids.min()}..{ids.max()}")


class _Batches:
    """Training units (windows or (user, t) examples) drawn in shuffled batches, reshuffled when used up."""

    def __init__(self, train_sequences: Sequence[np.ndarray], num_items: int, config: LLMNextItemConfig,
                 rng: np.random.Generator) -> None:
        self.config, self.rng = config, rng
        self.all_positions = config.objective == "all_positions"
        if self.all_positions:
            self.windows = torch.from_numpy(
                llm_training_windows(train_sequences, num_items, config.history_length, config.windows)
            )
            units = int(self.windows.shape[0])
        else:
            self.users, self.positions = training_examples(
                train_sequences, next_items=config.next_items, recent_positions=config.recent_positions
            )
            units = int(self.users.size)
        self.units = units
        self.batch_size = min(config.batch_size, units)
        self.order, self.cursor = rng.permutation(units), 0
        self.steps_per_epoch = config.steps_per_epoch or -(-units // self.batch_size)

    def next_loss(self, model: SlateModel, train_sequences: Sequence[np.ndarray], device: Any) -> tuple[torch.Tensor, int]:
        """Loss of the next batch and its number of targets."""
        if self.cursor + self.batch_size > self.order.size:
            self.order, self.cursor = self.rng.permutation(self.units), 0
        idx = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        if self.all_positions:
            return self._windows_loss(model, self.windows[torch.from_numpy(idx)])
        loss = _next_item_loss(model, train_sequences, self.users[idx], self.positions[idx], self.config, device)
        return loss, len(idx) * self.config.next_items

    def user_loss(self, model: SlateModel, user: int) -> torch.Tensor:
        """The loss of one user's training window alone (``objective="all_positions"``)."""
        return self._windows_loss(model, self.windows[user : user + 1])[0]

    def _windows_loss(self, model: SlateModel, windows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """:func:`all_positions_loss` of ``windows`` with this run's context size and future targets."""
        return all_positions_loss(model, windows, self.config.context_dim,
                                  future_targets=self.config.future_targets, future_decay=self.config.future_decay)

    def private_epoch(self, model: SlateModel, user_dp: UserLevelDP, after_step: Callable[[], None]) -> tuple[float, int]:
        """``steps_per_epoch`` user-level DP steps, each followed by ``after_step()``; (sum of the steps'
        mean losses, targets seen)."""
        total, targets = 0.0, 0
        for _ in range(self.steps_per_epoch):
            users = user_dp.sample_users()
            step = user_dp.step(lambda u: self.user_loss(model, u), users)
            after_step()
            total += step.loss if step.users else 0.0
            windows = self.windows[torch.from_numpy(users)]
            targets += int(((windows[:, :-1] != model.num_items) & (windows[:, 1:] != model.num_items)).sum())
        return total, targets


def _calibrate_after_training(
    model: SlateModel,
    valid_histories: Sequence[np.ndarray],
    valid_targets: np.ndarray,
    config: LLMNextItemConfig,
    stopper: BestOnValidation,
    progress: Callable[[str], None] | None,
) -> tuple[float, dict[TextMatchSetting, dict[str, float]]]:
    """Run :func:`calibrate_text_match` when the model has the term; returns (validation NDCG@10, settings tried)."""
    if model.text_match_weight is None or not config.text_match_grid:
        return stopper.best_score, {}
    calibration = calibrate_text_match(
        model, valid_histories, valid_targets, config.history_length, config.context_dim, config.text_match_grid,
        config.text_match_offset_grid, config.text_match_cold_tolerance,
    )
    chosen, text_match = calibration.chosen, calibration.validation
    valid_ndcg = text_match[chosen]["ndcg@10"]
    if progress is not None:
        off = text_match.get((0.0, 0.0, 0.0), {}).get("ndcg@10", float("nan"))
        progress(f"llm text-match weights: {chosen[0]:g} (items with an id vector), {chosen[1]:g} and offset "
                 f"{chosen[2]:g} (features only); valid NDCG@10 {valid_ndcg:.4f} (cold users "
                 f"{text_match[chosen]['cold_ndcg@10']:.4f}; term off: {off:.4f})")
    return valid_ndcg, text_match


@torch.no_grad()
def calibrate_features_view(
    model: SlateModel,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    history_length: int,
    context_dim: int,
    grid: Sequence[float],
) -> dict[float, float]:
    """Set ``model.config.features_view_weight`` to the ``grid`` value with the best validation NDCG@10.

    ``histories`` / ``targets``: the validation users' model inputs and next items (full catalog, history
    items excluded). The logits are linear in the weight: each batch is scored once in the id view and
    once in the features view (:meth:`SlateModel.features_only`), and every weight w ranks by
    ``ids + w * features``; ties go to the smaller weight. Returns ``{weight: validation NDCG@10}``.
    """
    if model.item_id_embedding is None:
        raise ValueError("calibrate_features_view needs a model with id vectors (config.item_id_embeddings=True): "
                         "without them both views are the same")
    grid = tuple(float(w) for w in grid)
    if not grid or min(grid) < 0:
        raise ValueError(f"grid must hold weights >= 0, got {grid}")
    targets = np.asarray(targets, dtype=np.int64)
    model.config = dataclasses.replace(model.config, features_view_weight=0.0)
    ids_view, features_view = (LLMScorer(model, history_length, context_dim) for _ in range(2))
    ranks: dict[float, list[np.ndarray]] = {weight: [] for weight in grid}
    for start in range(0, len(histories), 128):
        batch = histories[start : start + 128]
        ids = ids_view.score(batch)
        with model.features_only():
            features = features_view.score(batch)
        for weight in grid:
            ranks[weight].append(target_ranks(ids + weight * features, targets[start : start + 128], batch))
    ndcg = {weight: ranking_metrics(np.concatenate(parts))["ndcg@10"] for weight, parts in ranks.items()}
    best = max(ndcg, key=lambda weight: (ndcg[weight], -weight))
    model.config = dataclasses.replace(model.config, features_view_weight=best)
    return ndcg


TextMatchSetting = tuple[float, float, float]
"""``(w_id, w_features, offset)``: the text-match weights and the features-only offset of a ``SlateModel``."""


@dataclass(frozen=True)
class TextMatchCalibration:
    """What ``calibrate_text_match`` chose and every setting it tried."""

    chosen: TextMatchSetting
    validation: dict[TextMatchSetting, dict[str, float]]
    """``{setting: {"ndcg@10": all validation users, "cold_ndcg@10": those whose target has no id vector}}``
    (``cold_ndcg@10`` is NaN without such users)"""


@torch.no_grad()
def calibrate_text_match(
    model: SlateModel,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    history_length: int,
    context_dim: int,
    grid: Sequence[float],
    offset_grid: Sequence[float] = (),
    cold_tolerance: float = 0.0,
) -> TextMatchCalibration:
    """Set ``model``'s text-match weights and features-only offset on validation data, in two stages.

    ``histories`` / ``targets``: the validation users' model inputs and next items, ranked over the
    full catalog with their history items excluded.

    1. The weights ``(w_id, w_features)`` (``SlateModel.text_match_weight``: candidates with a learned
       id vector / scored by their features alone) are the pair of ``grid`` values with the best
       validation NDCG@10, offset 0; ties go to the smaller weights.
    2. With an ``offset_grid``: the rare-item setting ``(w_features, offset)`` from ``grid`` x
       ``offset_grid`` (``w_id`` kept) with the best NDCG@10 of the *cold* validation users (whose target
       has no id vector), among the settings whose overall validation NDCG@10 is at least stage 1's
       minus ``cold_tolerance`` (stage 1's setting always qualifies); ties go to the better overall
       NDCG@10. A large weight with a negative offset lifts just the rare items whose text matches the
       last item's well. Overall NDCG@10 alone never picks such a setting on MovieLens: cold targets
       are a minority, and the settings that serve them best cost the others more than they gain.

    The logits are linear in the weights and the offset, so the model scores each validation batch
    twice (weights 0 and 1, offset 0) and every setting is a weighted sum of the two.
    """
    if model.text_match_weight is None:
        raise ValueError("calibrate_text_match needs a model with config.text_match_dims > 0")
    grid, offset_grid = tuple(float(w) for w in grid), tuple(float(b) for b in offset_grid)
    if not grid or min(grid) < 0:
        raise ValueError(f"grid must hold weights >= 0, got {grid}")
    if cold_tolerance < 0:
        raise ValueError(f"cold_tolerance must be >= 0, got {cold_tolerance}")
    targets = np.asarray(targets, dtype=np.int64)
    has_id = (
        model.item_id_active[:-1].cpu().numpy() if model.item_id_embedding is not None else np.zeros(model.num_items, bool)
    )
    cold = ~has_id[targets]
    scorer = LLMScorer(model, history_length, context_dim)

    # Each stage re-scores the validation users (two passes per batch) instead of keeping their
    # (users x items) base and cosine arrays between the stages, which outgrow memory on large releases.
    def validation_ndcg(settings: list[TextMatchSetting]) -> dict[TextMatchSetting, dict[str, float]]:
        ranks: dict[TextMatchSetting, list[np.ndarray]] = {setting: [] for setting in settings}
        for start in range(0, len(histories), 128):
            batch = histories[start : start + 128]
            model.text_match_weight.fill_(0.0)
            model.text_match_offset.fill_(0.0)
            base = scorer.score(batch)
            model.text_match_weight.fill_(1.0)
            cosine = scorer.score(batch) - base
            for w_id, w_features, offset in settings:
                shift = np.where(has_id, 0.0, offset).astype(np.float32)
                scores = base + cosine * np.where(has_id, w_id, w_features).astype(np.float32) + shift
                ranks[(w_id, w_features, offset)].append(target_ranks(scores, targets[start : start + 128], batch))
        out = {}
        for setting, parts in ranks.items():
            r = np.concatenate(parts)
            cold_ndcg = ranking_metrics(r[cold])["ndcg@10"] if cold.any() else float("nan")
            out[setting] = {"ndcg@10": ranking_metrics(r)["ndcg@10"], "cold_ndcg@10": cold_ndcg}
        return out

    results = validation_ndcg([(a, b, 0.0) for a in grid for b in grid])
    best = max(results, key=lambda setting: (results[setting]["ndcg@10"], -sum(setting)))
    if offset_grid and cold.any():
        floor = results[best]["ndcg@10"] - cold_tolerance
        rare = validation_ndcg([(best[0], b, offset) for b in grid for offset in offset_grid])
        results.update(rare)
        qualified = [setting for setting, row in rare.items() if row["ndcg@10"] >= floor] + [best]
        best = max(qualified, key=lambda s: (results[s]["cold_ndcg@10"], results[s]["ndcg@10"], s == best))
    model.text_match_weight.copy_(torch.tensor(best[:2]))
    model.text_match_offset.fill_(best[2])
    return TextMatchCalibration(chosen=best, validation=results)
