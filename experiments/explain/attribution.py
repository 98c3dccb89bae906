"""Which past items and which item features made each slot of a slate: Integrated Gradients.

Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML
2017), computed by Captum, of the pointer logit of the item chosen at each slate slot, teacher-forced
on the greedy slate (``SlateModel.score_slate``), with respect to the model's continuous inputs:

==========================  =====================================================================
input                       baseline (what "not knowing it" means)
==========================  =====================================================================
history items' text         zeros: the padding item's features (responses, positions and which
history items' id vectors   history slots are valid are kept)
history consumption         0
context                     zeros (day 0, step 0, no clicks yet)
candidates' text            zeros (the padding item)
candidates' id vectors      zeros
text-match cosines          0 (the cosine of each candidate to the last clicked item, an input of
                            its own: it is scale-free, so a straight path from zero text would
                            switch it on in one jump that no Riemann sum sees)
==========================  =====================================================================

Completeness: the attributions of one slot sum to ``logit(input) - logit(baseline)`` up to Captum's
convergence delta. They are reported per history position (item text + id vector + consumption of
that slot: "which past items made this recommendation") and per feature group: the chosen item's
text, id vector and text match, the items chosen at earlier slots (fed back to the decoder),
history items, history consumption and context. Visible popularity is no input of the slate model,
so it gets no attribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from experiments.compare import save_figure
from llm_policy.config import ITEM_STATISTICS
from llm_policy.model import SlateModel

DEFAULT_STEPS = 64
"""Gauss-Legendre steps of the path integral to start with (the tests check completeness at this setting)"""
MAX_STEPS = 512
"""steps are doubled up to this many while the convergence delta exceeds the tolerance"""
DELTA_TOLERANCE = 0.01
"""largest accepted |convergence delta| of a slot, relative to the slate's mean |logit - baseline logit|"""


@dataclass
class SlateAttribution:
    """Attributions of one greedy slate's K slot logits (arrays indexed by slot first)."""

    slate: np.ndarray
    """(K,) candidate indices"""
    item_ids: np.ndarray
    """(K,) catalog ids"""
    logits: np.ndarray
    """(K,) pointer logit of the chosen item at each slot"""
    baseline_logits: np.ndarray
    """(K,) the same at the baseline"""
    history: np.ndarray
    """(K, H) attribution of each history position (item text + id vector + consumption)"""
    groups: dict[str, np.ndarray]
    """feature group -> (K,) attribution"""
    delta: np.ndarray
    """(K,) Captum's convergence delta: sum of attributions - (logit - baseline logit)"""
    steps: int = DEFAULT_STEPS
    """Integrated Gradients steps used"""

    @property
    def total(self) -> np.ndarray:
        """(K,) sum of all attributions (= logits - baseline_logits - delta)."""
        return np.sum(list(self.groups.values()), axis=0)

    @property
    def relative_delta(self) -> float:
        """Largest |delta| of a slot relative to the slate's mean |logit - baseline logit|."""
        return relative_delta(self.delta, self.logits - self.baseline_logits)


def relative_delta(delta: np.ndarray, change: np.ndarray) -> float:
    """``max |delta| / mean |change|`` of one slate's slots (0 when nothing changed and nothing is missing)."""
    scale = float(np.abs(change).mean())
    worst = float(np.abs(delta).max())
    return worst / scale if scale > 0 else (0.0 if worst == 0 else float("inf"))


class SlotLogits(torch.nn.Module):
    """The slate model as a function of its continuous inputs: ``(n, K)`` logits of a given slate's items.

    Inputs (batch-first, one row per copy of the state): history text ``(n, H, d)``, history
    consumption ``(n, H)``, context ``(n, D)``, candidate text ``(n, C, d)``, then, when the model has
    them, history and candidate id vectors ``(n, H, d)``, ``(n, C, d)``, then the text-match cosines
    ``(n, C)``; then the fixed discrete arguments: responses ``(n, H)``, valid history slots ``(n, H)``,
    which candidates have an id vector ``(n, C)`` and the slate ``(n, K)``.
    """

    def __init__(self, model: SlateModel) -> None:
        super().__init__()
        self.model = model.eval()
        self.has_ids = model.item_id_embedding is not None
        self.has_match = model.text_match_weight is not None

    def input_names(self) -> list[str]:
        names = ["history_text", "history_consumption", "context", "candidate_text"]
        if self.has_ids:
            names += ["history_id", "candidate_id"]
        if self.has_match:
            names.append("text_match")
        return names

    def inputs_of(self, obs: Mapping[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        """``(continuous inputs, fixed arguments)`` of a one-row observation (the contract's five arrays)."""
        model = self.model
        device = model.item_embeddings.device
        hist = model._ids(obs["history_item_ids"]).to(device)
        cand = model._ids(obs["candidate_item_ids"]).to(device)
        responses = model._ids(obs["history_responses"]).to(device)
        table = model.item_embeddings
        inputs = [table[hist], obs["history_consumption"].to(device).float(), obs["context"].to(device).float(), table[cand]]
        has_id = model.item_id_active[cand] if self.has_ids else torch.zeros_like(cand, dtype=torch.bool)
        fixed = {"responses": responses, "valid": (hist != model.num_items) & (responses != 0), "has_id": has_id}
        if self.has_ids:
            inputs += [self._id_vectors(hist), self._id_vectors(cand)]
        if self.has_match:
            keys = model.text_match_keys(cand)
            query = model.text_match_keys(model.last_clicked(hist, responses))
            inputs.append(torch.einsum("bm,bcm->bc", query, keys))
        return tuple(t.detach() for t in inputs), fixed

    def _id_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        model = self.model
        return model.item_id_embedding(ids) * model.item_id_active[ids].unsqueeze(-1).float()

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        names = self.input_names()
        x = dict(zip(names, args[: len(names)], strict=True))
        responses, valid, has_id, slate = args[len(names) :]
        model = self.model
        history = x["history_text"] + x["history_id"] if self.has_ids else x["history_text"]
        candidates = x["candidate_text"] + x["candidate_id"] if self.has_ids else x["candidate_text"]
        pooled, states, mask = model.encoder(history, valid, responses, x["history_consumption"], x["context"])
        cands = model.decoder.prepare_candidates(candidates)
        if self.has_match:
            weight = torch.where(has_id, model.text_match_weight[0], model.text_match_weight[1])
            offset = torch.where(has_id, torch.zeros_like(model.text_match_offset), model.text_match_offset)
            cands.match_logits = weight * x["text_match"] + offset
        logits = model.decoder.teacher_forced(states, mask, pooled, cands, slate).logits
        return logits.gather(2, slate.unsqueeze(-1)).squeeze(-1)


def attribute_slate(model: SlateModel, obs: Mapping[str, np.ndarray | torch.Tensor], slate: Sequence[int] | np.ndarray,
                    n_steps: int = DEFAULT_STEPS, max_steps: int = MAX_STEPS,
                    tolerance: float = DELTA_TOLERANCE) -> SlateAttribution:
    """Integrated Gradients of each slot's logit of ``slate`` ``(K,)`` for one observation (unbatched arrays).

    Starts with ``n_steps`` and doubles them (up to ``max_steps``) while :func:`relative_delta` exceeds
    ``tolerance``: a sharp bend of the logit along the path needs a finer integral.
    """
    from captum.attr import IntegratedGradients

    device = model.item_embeddings.device
    one = {key: torch.as_tensor(np.asarray(value))[None] for key, value in obs.items()}
    function = SlotLogits(model)
    inputs, fixed = function.inputs_of(one)
    slate_t = torch.as_tensor(np.asarray(slate), dtype=torch.long, device=device)[None]
    k = slate_t.shape[1]
    # one example per slot: the same state K times, each with its own target slot
    expanded = tuple(t.expand(k, *t.shape[1:]).contiguous() for t in inputs)
    fixed_args = tuple(t.expand(k, *t.shape[1:]).contiguous()
                       for t in (fixed["responses"], fixed["valid"], fixed["has_id"], slate_t))
    baselines = tuple(torch.zeros_like(t) for t in expanded)
    with torch.no_grad():
        logits = function(*expanded, *fixed_args).diagonal()
        baseline_logits = function(*baselines, *fixed_args).diagonal()
    integrated = IntegratedGradients(function)
    change = (logits - baseline_logits).double().cpu().numpy()
    while True:
        attributions, delta = integrated.attribute(
            expanded, baselines=baselines, target=list(range(k)), additional_forward_args=fixed_args,
            n_steps=n_steps, return_convergence_delta=True)
        if n_steps * 2 > max_steps or relative_delta(delta.detach().double().cpu().numpy(), change) <= tolerance:
            break
        n_steps *= 2
    a = dict(zip(function.input_names(), (t.detach().double().cpu().numpy() for t in attributions), strict=True))
    chosen = slate_t[0].cpu().numpy()
    slots = np.arange(k)
    history = a["history_text"].sum(-1) + a["history_consumption"] + (a["history_id"].sum(-1) if function.has_ids else 0.0)
    candidate = a["candidate_text"].sum(-1)  # (K, C)
    # the item features are the text embedding, then (with policy.item_statistics) the logged statistics
    stats = len(ITEM_STATISTICS) if model.config.item_statistics else 0
    text_columns = slice(0, a["candidate_text"].shape[-1] - stats)
    groups = {"chosen item: text": a["candidate_text"][..., text_columns].sum(-1)[slots, chosen]}
    if stats:
        groups["chosen item: logged statistics"] = a["candidate_text"][..., -stats:].sum(-1)[slots, chosen]
    if function.has_ids:
        candidate_id = a["candidate_id"].sum(-1)
        groups["chosen item: id vector"] = candidate_id[slots, chosen]
        candidate = candidate + candidate_id
    if function.has_match:
        groups["chosen item: text match"] = a["text_match"][slots, chosen]
    earlier = np.tril(np.ones((k, k), dtype=bool), k=-1)  # earlier[s, j]: slot j comes before slot s
    groups["earlier slate items"] = (candidate[:, chosen] * earlier).sum(1)
    in_prefix = np.zeros(candidate.shape, dtype=bool)  # in_prefix[s, c]: candidate c is chosen at a slot <= s
    for s_ in slots:
        in_prefix[s_:, chosen[s_]] = True
    others = np.where(in_prefix, 0.0, candidate).sum(1)
    if np.abs(others).max() > 0:  # none in this model (a logit reads only its own key); kept for completeness
        groups["other candidates"] = others
    groups["history items: text"] = a["history_text"][..., text_columns].sum((1, 2))
    if stats:
        groups["history items: logged statistics"] = a["history_text"][..., -stats:].sum((1, 2))
    if function.has_ids:
        groups["history items: id vector"] = a["history_id"].sum((1, 2))
    groups["history consumption"] = a["history_consumption"].sum(1)
    groups["context"] = a["context"].sum(1)
    return SlateAttribution(
        slate=chosen, item_ids=one["candidate_item_ids"][0].numpy()[chosen], logits=logits.double().cpu().numpy(),
        baseline_logits=baseline_logits.double().cpu().numpy(), history=history, groups=groups,
        delta=delta.detach().double().cpu().numpy(), steps=n_steps)


def plot_attributions(panels: Sequence[tuple[str, SlateAttribution]], obs: Mapping[str, np.ndarray],
                      topic_names: Sequence[str], item_topic: np.ndarray, item_note: Mapping[int, str], path: Path,
                      title: str) -> Path:
    """One row per policy: slot x history-position heatmap (left) and the feature groups per slot (right)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    hist = np.asarray(obs["history_item_ids"])
    responses = np.asarray(obs["history_responses"])
    num_items = len(item_topic)
    fig, axes = plt.subplots(len(panels), 2, figsize=(15, 2.9 * len(panels) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1.0]})
    xlabels = [("" if i == num_items else f"{topic_names[item_topic[i]][:9]}{' *' if r == 2 else ''}")
               for i, r in zip(hist, responses, strict=True)]
    for row, (label, att) in enumerate(panels):
        ax = axes[row, 0]
        scale = max(float(np.abs(att.history).max()), 1e-9)
        image = ax.imshow(att.history, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -scale, scale))
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=70, fontsize=6)
        ylabels = [f"{s + 1}: {topic_names[item_topic[i]][:10]} {item_note.get(int(i), '')}" for s, i in enumerate(att.item_ids)]
        ax.set_yticks(range(len(ylabels)), ylabels, fontsize=7)
        ax.set_title(f"{label}: which history items (oldest -> newest; * = clicked) raised each slot's logit", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.025)
        ax = axes[row, 1]
        names = list(att.groups)
        left_pos = np.zeros(len(att.slate))
        left_neg = np.zeros(len(att.slate))
        for name in names:
            values = att.groups[name]
            left = np.where(values >= 0, left_pos, left_neg)
            ax.barh(np.arange(len(values)), values, left=left, label=name, height=0.7)
            left_pos += np.maximum(values, 0)
            left_neg += np.minimum(values, 0)
        ax.scatter(att.logits - att.baseline_logits, np.arange(len(att.slate)), color="black", marker="|", s=120,
                   label="logit - baseline logit", zorder=3)
        ax.set_yticks(range(len(att.slate)), [f"slot {s + 1}" for s in range(len(att.slate))], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        ax.set_title("feature groups per slot", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        if row == 0:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
