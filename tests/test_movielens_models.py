"""Tests of the offline next-item models: SASRec and the LLM policy's full-catalog next-item adapter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents.offline_protocol import (
    LeaveOneOutSplit,
    PopularityScorer,
    evaluate_next_item,
    leave_one_out_split,
)
from agents.sasrec import SASRec, SASRecConfig, SASRecScorer, _left_pad, _training_windows, train_sasrec
from llm_policy.config import DPConfig, SlatePolicyConfig
from llm_policy.metrics import ndcg_at_k, target_ranks
from llm_policy.model import SlateModel
from llm_policy.next_item import (
    LLMNextItemConfig,
    LLMScorer,
    all_positions_loss,
    calibrate_features_view,
    calibrate_text_match,
    catalog_logits,
    history_observation,
    llm_training_windows,
    sequence_windows,
    train_llm_next_item,
    training_examples,
)

torch.set_num_threads(1)


def cyclic_sequences(cycle: np.ndarray, num_users: int = 60, length: int = 10, seed: int = 0) -> list[np.ndarray]:
    """Each user walks ``cycle`` (wrapping around) from a random start: the next item is learnable."""
    rng = np.random.default_rng(seed)
    return [cycle[(rng.integers(len(cycle)) + np.arange(length)) % len(cycle)] for _ in range(num_users)]


def test_left_pad_and_windows() -> None:
    np.testing.assert_array_equal(_left_pad([np.array([3, 4, 5]), np.array([7])], 2), [[5, 6], [0, 8]])
    split = leave_one_out_split([np.arange(8)], num_items=10)  # train 0..5
    tail = _training_windows(split, SASRecConfig(max_len=3))
    np.testing.assert_array_equal(tail, [[3, 4, 5, 6]])  # tokens = item + 1
    chunks = _training_windows(split, SASRecConfig(max_len=3, windows="chunks"))
    np.testing.assert_array_equal(chunks, [[3, 4, 5, 6], [0, 1, 2, 3]])  # overlap by one item: every target kept


def test_sasrec_is_causal_and_ignores_left_padding() -> None:
    torch.manual_seed(0)
    model = SASRec(20, SASRecConfig(max_len=8, hidden=16, dropout=0.0)).eval()
    tokens = torch.tensor([[0, 0, 3, 5, 7, 2, 9, 4]])
    states = model.hidden_states(tokens)
    changed = tokens.clone()
    changed[0, -1] = 11
    states2 = model.hidden_states(changed)
    torch.testing.assert_close(states[0, :-1], states2[0, :-1])  # the past does not see the future
    assert not torch.allclose(states[0, -1], states2[0, -1])
    assert torch.all(states[0, :2] == model.final_norm(torch.zeros(16)))  # padding rows are zeroed before the norm
    assert model(tokens).shape == (1, 20)
    # Scores are dot products with the shared input embedding.
    torch.testing.assert_close(model(tokens), states[:, -1] @ model.item_embedding.weight[1:].T)


def test_sasrec_learns_a_cycle_and_is_deterministic() -> None:
    seqs = cyclic_sequences(np.arange(40), num_users=40, length=14)
    split = leave_one_out_split(seqs, num_items=40)
    config = SASRecConfig(max_len=10, hidden=16, batch_size=16, max_epochs=30, patience=30, dropout=0.0, learning_rate=1e-2)
    model, log = train_sasrec(split, config)
    result = evaluate_next_item(SASRecScorer(model), split)
    popularity = evaluate_next_item(PopularityScorer.fit(split), split)
    assert result.metrics()["ndcg@10"] > 0.9 > popularity.metrics()["ndcg@10"]
    assert log.best_valid_ndcg > 0.9 and 1 <= log.best_epoch <= log.epochs
    model2, _ = train_sasrec(split, config)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_sasrec_config_errors() -> None:
    with pytest.raises(ValueError, match="hidden"):
        SASRecConfig(hidden=10, num_heads=3)
    with pytest.raises(ValueError, match="windows"):
        SASRecConfig(windows="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_len"):
        SASRec(5, SASRecConfig(max_len=4)).hidden_states(torch.ones(1, 5, dtype=torch.long))


def train_on_split(split: LeaveOneOutSplit, item_embeddings, config: LLMNextItemConfig, **kwargs):
    """``train_llm_next_item`` on a split's training sequences, validated on its validation users."""
    return train_llm_next_item(split.train, split.histories("valid"), split.targets("valid"), item_embeddings, config, **kwargs)


def tiny_llm_config(**kwargs) -> LLMNextItemConfig:
    model = SlatePolicyConfig(d_model=16, n_encoder_layers=1, n_encoder_heads=2, n_decoder_layers=1, n_decoder_heads=2, max_history=16)
    defaults = dict(model=model, history_length=6, batch_size=32, steps_per_epoch=20, max_epochs=3, patience=3, learning_rate=1e-2,
                    objective="next_item", id_min_count=0)
    return LLMNextItemConfig(**{**defaults, **kwargs})


def test_history_observation_and_catalog_logits_match_full_catalog_scoring() -> None:
    obs = history_observation([np.array([1, 2, 3]), np.array([], dtype=np.int64)], num_items=5, history_length=4, context_dim=4)
    np.testing.assert_array_equal(obs["history_item_ids"], [[5, 1, 2, 3], [5, 5, 5, 5]])
    np.testing.assert_array_equal(obs["history_responses"], [[0, 2, 2, 2], [0, 0, 0, 0]])
    torch.manual_seed(0)
    model = SlateModel(tiny_llm_config().model, torch.randn(5, 8), context_dim=4).eval()
    with torch.no_grad():
        reference = model.candidate_scores(model.encode(obs, full_catalog=True))
        torch.testing.assert_close(catalog_logits(model, obs), reference)


def test_llm_next_item_learns_from_text_and_ranks_an_unseen_item() -> None:
    # 40 items on a circle; an item's "text embedding" is Fourier features of its angle. Users walk the
    # circle but never meet item 20, so only the text tells where it belongs: right after item 19.
    num_items, hole = 40, 20
    angle = 2 * np.pi * np.arange(num_items) / num_items
    texts = np.stack([f(k * angle) for k in (1, 2, 3) for f in (np.cos, np.sin)], axis=1).astype(np.float32)
    seqs = cyclic_sequences(np.delete(np.arange(num_items), hole), num_users=60, length=10, seed=2)
    split = leave_one_out_split(seqs, num_items=num_items)
    assert split.train_item_counts()[hole] == 0
    config = tiny_llm_config()
    model, log = train_on_split(split, texts, config)
    scorer = LLMScorer(model, config.history_length, config.context_dim)
    ndcg = evaluate_next_item(scorer, split).metrics()["ndcg@10"]
    assert ndcg > 0.9 > 0.5 > evaluate_next_item(PopularityScorer.fit(split), split).metrics()["ndcg@10"]
    assert log["best_valid_ndcg@10"] > 0.9 and log["examples_seen"] == log["epochs"] * 20 * 32
    scores = scorer.score([np.array([15, 16, 17, 18, 19])])[0]
    assert hole in np.argsort(-scores)[:5].tolist()  # the never-seen item ranks among the true successors
    model2, _ = train_on_split(split, texts, config)  # deterministic for a seed
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_llm_weights_load_into_the_ppo_policy(tmp_path) -> None:
    import gymnasium as gym

    from llm_policy.sb3_policy import LLMSlatePolicy

    torch.manual_seed(0)
    config = tiny_llm_config(
        model=SlatePolicyConfig(**{**tiny_llm_config().model.to_dict(), "dropout": 0.2, "item_id_embeddings": True,
                                   "item_id_dropout": 0.5})
    )
    model = SlateModel(config.model, torch.randn(12, 8), context_dim=config.context_dim)
    folder = model.save_pretrained(tmp_path / "best")
    n, h, c, k = 12, 5, 6, 3
    obs_space = gym.spaces.Dict(
        {
            "history_item_ids": gym.spaces.Box(0, n, (h,), np.int64),
            "history_responses": gym.spaces.Box(0, 2, (h,), np.int64),
            "history_consumption": gym.spaces.Box(0, 1, (h,), np.float32),
            "candidate_item_ids": gym.spaces.Box(0, n - 1, (c,), np.int64),
            "context": gym.spaces.Box(0, 1, (4,), np.float32),
        }
    )
    policy = LLMSlatePolicy(obs_space, gym.spaces.MultiDiscrete([c] * k), lambda _: 1e-3, pretrained_path=str(folder))
    for a, b in zip(model.state_dict().values(), policy.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    # pretraining's dropout and id dropout are off for PPO: train-mode scoring is deterministic
    assert config.model.dropout > 0 and config.model.item_id_dropout > 0
    assert policy.model.config.dropout == 0 and policy.model.config.item_id_dropout == 0
    obs = {key: torch.as_tensor(np.stack([obs_space[key].sample() for _ in range(4)])) for key in obs_space}
    policy.model.train()
    enc1, enc2 = policy.model.encode(obs), policy.model.encode(obs)
    torch.testing.assert_close(policy.model.candidate_scores(enc1), policy.model.candidate_scores(enc2))
    resaved = SlateModel.from_pretrained(policy.model.save_pretrained(tmp_path / "ppo"))
    assert resaved.encoder.transformer.config.hidden_dropout_prob == 0 and resaved.config.dropout == 0


def test_llm_config_errors() -> None:
    with pytest.raises(ValueError, match="history_length"):
        tiny_llm_config(history_length=40)
    with pytest.raises(ValueError, match="batch_size"):
        tiny_llm_config(batch_size=0)


def test_pretrain_movielens_on_fixture(tmp_path) -> None:
    import dataclasses
    import json
    from pathlib import Path

    from agents.movielens_pretrain import MovieLensPretrainConfig, pretrain_movielens
    from envs.movielens import load_movielens
    from llm_policy.tiny import make_tiny_bert

    fixture = Path(__file__).parent / "fixtures" / "ml_tiny"
    text_model = make_tiny_bert(tmp_path / "tiny_text_encoder", load_movielens(fixture).texts, seed=0)
    base = LLMNextItemConfig()
    model_config = dataclasses.replace(base.model, d_model=16, n_encoder_heads=2, n_decoder_heads=2, n_decoder_layers=1)
    config = MovieLensPretrainConfig(train=dataclasses.replace(base, model=model_config, max_epochs=2, batch_size=4))
    out = pretrain_movielens(config, data_path=fixture, text_model=str(text_model), output_dir=tmp_path)
    model = SlateModel.from_pretrained(out.best_dir)
    assert model.num_items == 6 and model.item_dim == 32 + 1 + 12  # tiny BERT text + popularity + release year
    metrics = out.flat_metrics()
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0 and metrics["epochs"] >= 1
    assert metrics["test_cold/0-4/users"] == out.test.by_bucket()["0-4"]["users"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"] == out.test.metrics() and saved["train_log"]["best_epoch"] == metrics["best_epoch"]


def test_training_examples_by_hand() -> None:
    split = leave_one_out_split([np.arange(12), np.array([5, 6, 5, 7, 8, 9])], num_items=20)  # train 0..9 and 5 6 5 7
    users, positions = training_examples(split.train)
    assert list(zip(users.tolist(), positions.tolist(), strict=True)) == [(0, t) for t in range(1, 10)] + [(1, 1), (1, 2), (1, 3)]
    users, positions = training_examples(split.train, recent_positions=2)
    assert list(zip(users.tolist(), positions.tolist(), strict=True)) == [(0, 8), (0, 9), (1, 2), (1, 3)]
    users, positions = training_examples(split.train, next_items=2)
    # user 1's window starting at t=1 is (6, 5), at t=2 (5, 7): both distinct; (5, 6, 5) never forms a 2-window repeat
    assert (users == 1).sum() == 2 and positions[users == 0].tolist() == list(range(1, 9))
    with pytest.raises(ValueError, match=">= 13 items"):
        training_examples(split.train, next_items=12)


def test_release_year_features_by_hand() -> None:
    from envs.movielens import release_year_features

    feats = release_year_features(np.array([-1, 1940, 1995, 2018]), edges=(1950, 1995, 2010))
    expected = np.array(
        [
            [0, 0, 0, 0, 0.0],  # unknown year: all zeros
            [1, 0, 0, 0, (1940 - 1995) / 20],
            [0, 0, 1, 0, 0.0],  # an edge opens its bin
            [0, 0, 0, 1, (2018 - 1995) / 20],
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(feats, expected)
    assert feats.dtype == np.float32


def causal_llm_config(pooling: str = "mean", text_match_dims: int = 0, **kwargs) -> LLMNextItemConfig:
    base = tiny_llm_config()
    model = SlatePolicyConfig(**{**base.model.to_dict(), "causal_encoder": True, "item_id_embeddings": True, "pooling": pooling,
                                 "text_match_dims": text_match_dims})
    return tiny_llm_config(model=model, objective="all_positions", **kwargs)


def test_llm_training_windows_by_hand() -> None:
    split = leave_one_out_split([np.arange(8), np.array([3, 4, 5, 6, 7]), np.array([1, 2, 3, 4, 5])], num_items=9)
    # training sequences: [0..5], [3, 4, 5], [1, 2, 3]
    np.testing.assert_array_equal(
        llm_training_windows(split.train, split.num_items, history_length=3), [[2, 3, 4, 5], [9, 3, 4, 5], [9, 1, 2, 3]]
    )
    # chunks: [0..5] gives [2..5] and [0, 1, 2] (consecutive windows share one item, so every target is kept)
    np.testing.assert_array_equal(
        llm_training_windows(split.train, split.num_items, history_length=3, mode="chunks"),
        [[2, 3, 4, 5], [9, 0, 1, 2], [9, 3, 4, 5], [9, 1, 2, 3]],
    )
    targets = sum(len(seq) - 1 for seq in split.train)
    chunks = sequence_windows(split.train, 4, "chunks")
    assert sum(len(w) - 1 for w in chunks) == targets  # every training transition is a target exactly once
    with pytest.raises(ValueError, match=r"one of \('tail', 'chunks'\), got 'all'"):
        sequence_windows(split.train, 4, "all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"windows must be one of \('tail', 'chunks'\), got 'all'"):
        LLMNextItemConfig(windows="all")  # type: ignore[arg-type]


def test_user_level_dp_refuses_several_windows_per_user() -> None:
    split = leave_one_out_split(cyclic_sequences(np.arange(6), num_users=4, length=12), num_items=6)
    config = causal_llm_config(windows="chunks")
    with pytest.raises(ValueError, match="user-level DP needs windows='tail' \\(one window per user\\), got 'chunks'"):
        train_on_split(split, torch.randn(6, 8), config, dp=DPConfig(epsilon=1.0))


def prefix_queries(pooling: str = "last", text_match_dims: int = 0) -> tuple[SlateModel, int, torch.Tensor, list]:
    """A small causal model, its context size, three left-padded windows and, per valid query (row, t), the catalog logits of
    the single-target model on the prefix ending at t alone (same positions, later slots padding)."""
    torch.manual_seed(0)
    n, h = 30, 8
    config = causal_llm_config(history_length=h, pooling=pooling, text_match_dims=text_match_dims)
    model = SlateModel(config.model, torch.randn(n, 8), context_dim=config.context_dim).eval()
    torch.nn.init.normal_(model.item_id_embedding.weight, std=0.5)
    windows = torch.randint(0, n, (3, h + 1))
    windows[1, :4] = n
    windows[2, :7] = n
    queries = []
    for row in windows:
        for t in range(h):
            if row[t] == n or row[t + 1] == n:
                continue
            ids = row[:h].clone()
            ids[t + 1 :] = n
            clicked = (ids != n).unsqueeze(0)
            obs = {
                "history_item_ids": ids.unsqueeze(0),
                "history_responses": clicked.long() * 2,
                "history_consumption": clicked.float(),
                "candidate_item_ids": torch.zeros(1, 1, dtype=torch.long),
                "context": torch.zeros(1, config.context_dim),
            }
            queries.append((catalog_logits(model, obs), row, t))
    return model, config.context_dim, windows, queries


@pytest.mark.parametrize(("pooling", "text_match_dims"), [("mean", 0), ("last", 0), ("last", 5)])
def test_all_positions_loss_is_the_mean_of_single_prefix_losses(pooling: str, text_match_dims: int) -> None:
    # One causal encoder pass over a window scores every prefix exactly as the single-target model
    # does on that prefix alone (same positions, later slots padding).
    model, context_dim, windows, queries = prefix_queries(pooling, text_match_dims)
    loss, count = all_positions_loss(model, windows, context_dim)
    singles = [torch.nn.functional.cross_entropy(logits, row[t + 1 : t + 2]) for logits, row, t in queries]
    assert count == len(singles) == 8 + 4 + 1
    torch.testing.assert_close(loss, torch.stack(singles).mean(), atol=1e-5, rtol=1e-5)


def test_future_targets_loss_is_the_soft_label_cross_entropy_over_the_next_items() -> None:
    # k = 3, decay 0.5: query t's loss is sum_j 0.5^j CE(item t + 1 + j) / sum_j 0.5^j over the items inside
    # the window; the last queries of a window have fewer future items.
    model, context_dim, windows, queries = prefix_queries()
    loss, count = all_positions_loss(model, windows, context_dim, future_targets=3, future_decay=0.5)
    expected = []
    for logits, row, t in queries:
        future = row[t + 1 : t + 4]
        weights = 0.5 ** torch.arange(len(future), dtype=torch.float32)
        nll = -logits.log_softmax(-1)[0, future]
        expected.append((weights * nll).sum() / weights.sum())
    assert count == len(queries)
    torch.testing.assert_close(loss, torch.stack(expected).mean(), atol=1e-5, rtol=1e-5)
    plain, _ = all_positions_loss(model, windows, context_dim)
    assert not torch.isclose(loss, plain)
    with pytest.raises(ValueError, match=r"future_targets must be >= 1 and future_decay in \(0, 1\], got 2, 0.0"):
        LLMNextItemConfig(future_targets=2, future_decay=0.0)
    with pytest.raises(ValueError, match="future_targets=2 needs objective='all_positions', got 'next_item'"):
        LLMNextItemConfig(future_targets=2, objective="next_item")


def test_llm_all_positions_objective_learns_a_cycle_and_is_deterministic() -> None:
    num_items = 40
    angle = 2 * np.pi * np.arange(num_items) / num_items
    texts = np.stack([f(k * angle) for k in (1, 2, 3) for f in (np.cos, np.sin)], axis=1).astype(np.float32)
    split = leave_one_out_split(cyclic_sequences(np.arange(num_items), num_users=60, length=10, seed=2), num_items=num_items)
    config = causal_llm_config(batch_size=16, steps_per_epoch=20, max_epochs=3)
    model, log = train_on_split(split, texts, config)
    ndcg = evaluate_next_item(LLMScorer(model, config.history_length, config.context_dim), split).metrics()["ndcg@10"]
    assert ndcg > 0.9 > 0.5 > evaluate_next_item(PopularityScorer.fit(split), split).metrics()["ndcg@10"]
    assert log["targets_seen"] > log["examples_seen"]  # several targets per window
    model2, _ = train_on_split(split, texts, config)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_rare_items_get_no_id_vector_after_training() -> None:
    num_items = 40
    angle = 2 * np.pi * np.arange(num_items) / num_items
    texts = np.stack([f(k * angle) for k in (1, 2, 3) for f in (np.cos, np.sin)], axis=1).astype(np.float32)
    split = leave_one_out_split(cyclic_sequences(np.arange(num_items), num_users=30, length=8, seed=3), num_items=num_items)
    counts = split.train_item_counts()
    assert (counts < 5).any() and (counts >= 5).any()
    model, _ = train_on_split(split, texts, causal_llm_config(max_epochs=1, id_min_count=5))
    ids = model.item_id_embedding.weight.detach()[:num_items].abs().sum(dim=1).numpy()
    assert np.all(ids[counts < 5] == 0) and np.all(ids[counts >= 5] > 0)
    np.testing.assert_array_equal(model.item_id_active[:num_items].numpy(), counts >= 5)
    with pytest.raises(ValueError, match="id_min_count"):
        tiny_llm_config(id_min_count=-1)


def test_all_positions_objective_errors() -> None:
    with pytest.raises(ValueError, match="causal_encoder"):
        tiny_llm_config(objective="all_positions")
    with pytest.raises(ValueError, match="objective"):
        tiny_llm_config(objective="everything")
    with pytest.raises(ValueError, match="causal_encoder"):
        SlatePolicyConfig(causal_encoder=True, pooling="context")


def test_calibrate_text_match_picks_the_weight_with_the_best_validation_ndcg() -> None:
    # Items 2i and 2i + 1 have the same text; each validation target is the text twin of the last
    # history item, so a large text-match weight ranks it first and weight 0 (an untrained model) does not.
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 40
    features = torch.from_numpy(np.repeat(rng.normal(size=(n // 2, 8)), 2, axis=0)).float()
    sequences = []
    for _ in range(30):
        a, b, c = rng.choice(n // 2, size=3, replace=False) * 2
        sequences.append(np.array([b, b + 1, a, a + 1, c]))  # valid: history [b, b+1, a] -> a + 1
    split = leave_one_out_split(sequences, num_items=n)
    model_config = SlatePolicyConfig(**{**tiny_llm_config().model.to_dict(), "text_match_dims": 8})
    model = SlateModel(model_config, features, context_dim=4).eval()
    calibration = calibrate_text_match(model, split.histories("valid"), split.targets("valid"), history_length=6, context_dim=4, grid=(0.0, 50.0))
    scores = {setting[:2]: row["ndcg@10"] for setting, row in calibration.validation.items()}
    assert set(calibration.validation) == {(0.0, 0.0, 0.0), (0.0, 50.0, 0.0), (50.0, 0.0, 0.0), (50.0, 50.0, 0.0)}
    # no id vectors: every item is scored by its features, so only the second weight matters
    assert scores[(0.0, 50.0)] == scores[(50.0, 50.0)] > 0.9 > 0.5 > scores[(50.0, 0.0)] == scores[(0.0, 0.0)]
    assert calibration.chosen == (0.0, 50.0, 0.0)
    assert model.text_match_weight.tolist() == [0.0, 50.0] and model.text_match_offset.item() == 0.0
    with pytest.raises(ValueError, match="grid"):
        calibrate_text_match(model, split.histories("valid"), split.targets("valid"), 6, 4, grid=(-1.0,))
    with pytest.raises(ValueError, match="text_match_dims"):
        calibrate_text_match(SlateModel(tiny_llm_config().model, features, 4), split.histories("valid"), split.targets("valid"), 6, 4, grid=(1.0,))
    with pytest.raises(ValueError, match="cold_tolerance"):
        calibrate_text_match(model, split.histories("valid"), split.targets("valid"), 6, 4, grid=(1.0,), cold_tolerance=-0.1)
    with pytest.raises(ValueError, match="text_match_grid"):
        tiny_llm_config(text_match_grid=(1.0, -2.0))
    with pytest.raises(ValueError, match="text_match_cold_tolerance"):
        tiny_llm_config(text_match_cold_tolerance=-1.0)


def test_calibrate_text_match_offset_lifts_close_text_matches_of_rare_items_only() -> None:
    # Warm users (history ..., a -> target t, both with id vectors) have a rare distractor f closer in
    # text to a (cosine 0.8) than t is (0.5); cold users (..., c -> c') need the rare exact twin c'.
    # Weights alone (stage 1) must give up one group: with w_features = 50 f beats t, with 0 c' gets
    # no lift; and the warm users are the majority, so stage 1 keeps w_features = 0. A large weight with
    # offset -45 lifts c' (50 - 45 = 5) but not f (40 - 45 < 0, below t's 25): stage 2 serves both.
    stories, dims = 4, 16
    basis = np.eye(dims)
    features, active, sequences = [], [], []
    for j in range(stories):  # items 3j (a), 3j + 1 (t), 3j + 2 (f)
        u, v, w = basis[3 * j], basis[3 * j + 1], basis[3 * j + 2]
        features += [u, 0.5 * u + np.sqrt(0.75) * v, 0.8 * u + 0.6 * w]
        active += [True, True, False]
    for j in range(stories):  # items 12 + 2j (c, with an id vector) and 13 + 2j (c', rare)
        features += [basis[12 + j]] * 2
        active += [True, False]
    warm_a, cold_c = [3 * j for j in range(stories)], [12 + 2 * j for j in range(stories)]
    for j in range(stories):
        others = [x for x in warm_a if x != 3 * j][:2]
        sequences += [np.array([*others, 3 * j, 3 * j + 1, others[0]])] * 3  # valid: [x, y, a] -> t
        others = [x for x in cold_c if x != 12 + 2 * j][:2]
        sequences += [np.array([*others, 12 + 2 * j, 13 + 2 * j, others[0]])]  # valid: [x, y, c] -> c'
    n = len(features)
    split = leave_one_out_split(sequences, num_items=n)
    torch.manual_seed(0)
    model_config = SlatePolicyConfig(**{**tiny_llm_config().model.to_dict(), "text_match_dims": dims, "item_id_embeddings": True})
    model = SlateModel(model_config, torch.tensor(np.array(features), dtype=torch.float32), context_dim=4).eval()
    model.restrict_item_ids(np.array(active))

    weights_only = calibrate_text_match(model, split.histories("valid"), split.targets("valid"), 6, 4, grid=(0.0, 50.0))
    assert weights_only.chosen == (50.0, 0.0, 0.0)
    assert weights_only.validation[(50.0, 0.0, 0.0)]["cold_ndcg@10"] < 0.9

    calibration = calibrate_text_match(model, split.histories("valid"), split.targets("valid"), 6, 4, grid=(0.0, 50.0), offset_grid=(0.0, -45.0))
    assert calibration.chosen == (50.0, 50.0, -45.0)
    assert calibration.validation[(50.0, 50.0, -45.0)] == {"ndcg@10": 1.0, "cold_ndcg@10": 1.0}
    assert calibration.validation[(50.0, 50.0, 0.0)]["ndcg@10"] < weights_only.validation[(50.0, 0.0, 0.0)]["ndcg@10"]
    assert model.text_match_weight.tolist() == [50.0, 50.0] and model.text_match_offset.item() == -45.0
    with torch.no_grad():  # the model now scores as the calibration did: every validation target first
        scores = LLMScorer(model, 6, 4).score(split.histories("valid"))
    np.testing.assert_array_equal(target_ranks(scores, split.targets("valid"), split.histories("valid")), 1)


def test_llm_learning_rate_halves_on_a_validation_plateau() -> None:
    split = leave_one_out_split(cyclic_sequences(np.arange(12), num_users=30), num_items=12)
    features = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    _, log = train_on_split(split, features, tiny_llm_config(max_epochs=8, patience=8, lr_decay_patience=0))
    rates = [record["lr"] for record in log["history"]]
    assert rates[0] == 1e-2 and min(rates) < 1e-2
    assert all(np.log2(1e-2 / r) == round(np.log2(1e-2 / r)) for r in rates)  # halvings only
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    _, constant = train_on_split(split, features, tiny_llm_config(max_epochs=3, lr_decay_patience=None))
    assert {record["lr"] for record in constant["history"]} == {1e-2}
    with pytest.raises(ValueError, match="lr_decay_patience"):
        tiny_llm_config(lr_decay_patience=-1)


def test_ema_training_validates_and_returns_the_moving_average_of_the_trained_weights() -> None:
    split = leave_one_out_split(cyclic_sequences(np.arange(12), num_users=30), num_items=12)
    features = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    config = tiny_llm_config(max_epochs=1, lr_decay_patience=None)
    # One epoch of j steps ends at the j-th weights of the same trajectory (same seed, same batches).
    trained = [train_on_split(split, features, dataclasses.replace(config, steps_per_epoch=j))[0].state_dict()
               for j in (1, 2, 3)]
    decay = 0.6
    expected = {name: value.clone() for name, value in trained[0].items()}  # the average starts at the first step
    for state in trained[1:]:
        for name, value in state.items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value
    averaged, log = train_on_split(split, features, dataclasses.replace(config, steps_per_epoch=3, ema_decay=decay))
    for name, value in averaged.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)
    assert any(not torch.allclose(value, trained[2][name]) for name, value in averaged.state_dict().items())  # not the last step's
    scorer = LLMScorer(averaged, config.history_length, config.context_dim)
    ranks = target_ranks(scorer.score(split.histories("valid")), split.targets("valid"), split.histories("valid"))
    assert log["history"][0]["valid_ndcg@10"] == pytest.approx(float(ndcg_at_k(torch.as_tensor(ranks), 10).mean()))
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match=rf"ema_decay must be None or in \(0, 1\), got {bad}"):
            tiny_llm_config(ema_decay=bad)


def test_private_training_moves_the_average_after_every_step() -> None:
    pytest.importorskip("opacus")
    split = leave_one_out_split(cyclic_sequences(np.arange(12), num_users=30), num_items=12)
    features = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    config = causal_llm_config(max_epochs=1, steps_per_epoch=2, lr_decay_patience=None)
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0)
    trained, _ = train_on_split(split, features, config, dp=dp)
    # a vanishing decay: the average follows the trained weights step for step (not the initial ones)
    averaged, _ = train_on_split(split, features, dataclasses.replace(config, ema_decay=1e-12), dp=dp)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(averaged.state_dict()[name], value, msg=name)


def features_view_model() -> tuple[SlateModel, LeaveOneOutSplit]:
    """A causal tiny model with id vectors for half of 12 items (random weights) and a split of cyclic users."""
    torch.manual_seed(0)
    config = causal_llm_config().model
    model = SlateModel(config, torch.randn(12, 8), context_dim=4).eval()
    torch.nn.init.normal_(model.item_id_embedding.weight)
    model.restrict_item_ids(np.arange(12) % 2 == 0)
    split = leave_one_out_split(cyclic_sequences(np.arange(12), num_users=40, seed=1), num_items=12)
    return model, split


def test_features_view_logits_add_the_weighted_logits_of_the_model_without_id_vectors() -> None:
    model, split = features_view_model()
    active = model.item_id_active.clone()
    obs = history_observation(split.histories("valid")[:5], 12, 6, 4)
    ids = catalog_logits(model, obs)
    with model.features_only():
        assert not model.item_id_active.any()
        features = catalog_logits(model, obs)
    assert torch.equal(model.item_id_active, active)  # restored
    model.restrict_item_ids(np.zeros(12, dtype=bool))
    torch.testing.assert_close(catalog_logits(model, obs), features)  # = an item never seen, in history and catalog
    model.restrict_item_ids(active[:-1])
    assert not torch.allclose(ids, features)
    model.config = dataclasses.replace(model.config, features_view_weight=0.5)
    torch.testing.assert_close(catalog_logits(model, obs), ids + 0.5 * features)
    scorer = LLMScorer(model, 6, 4)  # cached keys of both views
    np.testing.assert_allclose(scorer.score(split.histories("valid")[:5]), (ids + 0.5 * features).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_calibrate_features_view_picks_the_weight_with_the_best_validation_ndcg(tmp_path) -> None:
    model, split = features_view_model()
    histories, targets = split.histories("valid"), split.targets("valid")
    grid = (0.0, 0.5, 1.0, 3.0)
    found = calibrate_features_view(model, histories, targets, 6, 4, grid)
    expected = {}
    for weight in grid:
        model.config = dataclasses.replace(model.config, features_view_weight=weight)
        expected[weight] = evaluate_next_item(LLMScorer(model, 6, 4), split, stage="valid").metrics()["ndcg@10"]
    assert found == pytest.approx(expected, abs=1e-6)
    best = max(grid, key=lambda w: (round(expected[w], 6), -w))
    model.config = dataclasses.replace(model.config, features_view_weight=0.0)
    calibrate_features_view(model, histories, targets, 6, 4, grid)
    assert model.config.features_view_weight == best
    loaded = SlateModel.from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert loaded.config.features_view_weight == best
    np.testing.assert_array_equal(LLMScorer(loaded, 6, 4).score(histories), LLMScorer(model, 6, 4).score(histories))
    with pytest.raises(ValueError, match=r"grid must hold weights >= 0, got \(\)"):
        calibrate_features_view(model, histories, targets, 6, 4, ())
    no_ids = SlateModel(tiny_llm_config().model, torch.randn(12, 8), context_dim=4)
    with pytest.raises(ValueError, match="needs a model with id vectors"):
        calibrate_features_view(no_ids, histories, targets, 6, 4, grid)
    with pytest.raises(ValueError, match=r"features_view_grid weights must be >= 0, got \(-1.0,\)"):
        tiny_llm_config(features_view_grid=(-1.0,))


def test_training_with_id_vectors_sets_the_features_view_weight_on_validation_users() -> None:
    split = leave_one_out_split(cyclic_sequences(np.arange(12), num_users=30), num_items=12)
    features = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    grid = (0.0, 0.25, 4.0)
    model, log = train_on_split(split, features, causal_llm_config(max_epochs=2, features_view_grid=grid))
    tried = {float(w): ndcg for w, ndcg in log["features_view_valid_ndcg@10"].items()}
    assert set(tried) == set(grid) and model.config.features_view_weight == max(grid, key=lambda w: (tried[w], -w))
    assert log["best_valid_ndcg@10"] == tried[model.config.features_view_weight]
    _, off = train_on_split(split, features, causal_llm_config(max_epochs=2, features_view_grid=()))
    assert off["features_view_valid_ndcg@10"] == {}
