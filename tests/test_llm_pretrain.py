"""Cross-entropy pretraining: learns a synthetic log's signal, checkpoints, loads into LLMSlatePolicy."""

import json

import numpy as np
import pytest
import torch
from gymnasium import spaces

from llm_policy.config import SlatePolicyConfig
from llm_policy.model import SlateModel
from llm_policy.pretrain import PretrainConfig, pretrain, split_users

N, E, H, C, K, D = 60, 12, 8, 12, 4, 2
TINY = SlatePolicyConfig(d_model=32, n_encoder_layers=1, n_decoder_layers=1, n_encoder_heads=2, n_decoder_heads=2)


def synthetic_log(num_users=60, steps=12, seed=0):
    """A log in the ``agents.logs`` format with a learnable behaviour policy.

    Each user likes one of 4 taste directions; their history holds items close to it.
    The behaviour slate = top-K candidates by ``quality + 2 * taste affinity`` (+ small noise),
    and the click is the slate item with the highest taste affinity.
    """
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((N, E)).astype(np.float32)
    quality = emb @ rng.standard_normal(E)
    tastes = rng.standard_normal((4, E))
    arrays = {k: [] for k in ("history_item_ids", "history_responses", "history_consumption", "candidate_item_ids",
                              "context", "slate", "slate_item_ids", "clicked_position", "clicked_item_id",
                              "consumption", "reward", "user_id")}
    for user in range(num_users):
        taste = tastes[user % 4]
        affinity = emb @ taste
        liked = np.argsort(-affinity)[:15]
        for _ in range(steps):
            hist = rng.choice(liked, H)
            cand = rng.permutation(N)[:C]
            score = quality[cand] + 2 * affinity[cand] + 0.1 * rng.standard_normal(C)
            slate = np.argsort(-score)[:K]
            click = int(np.argmax(affinity[cand[slate]])) if rng.random() < 0.8 else -1
            arrays["history_item_ids"].append(hist)
            arrays["history_responses"].append(np.full(H, 2))
            arrays["history_consumption"].append(rng.random(H).astype(np.float32))
            arrays["candidate_item_ids"].append(cand)
            arrays["context"].append(rng.random(D).astype(np.float32))
            arrays["slate"].append(slate)
            arrays["slate_item_ids"].append(cand[slate])
            arrays["clicked_position"].append(click)
            arrays["clicked_item_id"].append(cand[slate[click]] if click >= 0 else -1)
            arrays["consumption"].append(np.float32(0.5 if click >= 0 else 0))
            arrays["reward"].append(np.float32(click >= 0))
            arrays["user_id"].append(user)
    logs = {k: np.stack(v) if np.ndim(v[0]) else np.asarray(v) for k, v in arrays.items()}
    logs["meta"] = {"env_id": "synthetic", "num_items": N}
    return logs, torch.from_numpy(emb)


def test_split_users_is_disjoint_and_seeded():
    users = np.repeat(np.arange(10), 3)
    tr, va = split_users(users, 0.3, seed=1)
    assert set(users[tr]).isdisjoint(users[va]) and len(tr) + len(va) == 30
    assert len(set(users[va])) == 3
    assert np.array_equal(split_users(users, 0.3, seed=1)[1], va)


def test_behaviour_cloning_beats_untrained_and_loads_into_policy(tmp_path):
    torch.set_num_threads(1)
    logs, emb = synthetic_log()
    cfg = PretrainConfig(target="slate", epochs=5, batch_size=64, learning_rate=3e-3, patience=3, val_fraction=0.2)
    result = pretrain(logs, emb, config=cfg, model_config=TINY, output_dir=tmp_path, seed=0, progress=False)
    m = result.metrics
    before, after = m["val_before/ndcg@10"], m["val/ndcg@10"]
    assert after > before + 0.3, (before, after)
    assert m["val/loss"] < m["val_before/loss"] - 0.5
    assert 1 <= m["best_epoch"] <= m["epochs_run"] <= 5
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["val/ndcg@10"] == pytest.approx(after)
    assert not list(tmp_path.rglob("*.tmp"))
    # the checkpoint is the best model and loads straight into the SB3 policy
    from llm_policy.pretrain import LogTensors, evaluate
    from llm_policy.sb3_policy import LLMSlatePolicy

    reloaded = SlateModel.from_pretrained(result.best_dir)
    data = LogTensors.from_logs(logs)
    assert evaluate(reloaded, data, cfg)["ndcg@10"] == pytest.approx(evaluate(result.model, data, cfg)["ndcg@10"])
    obs_space = spaces.Dict({
        "history_item_ids": spaces.Box(0, N, (H,), np.int64),
        "history_responses": spaces.Box(0, 2, (H,), np.int64),
        "history_consumption": spaces.Box(0, 1, (H,), np.float32),
        "candidate_item_ids": spaces.Box(0, N - 1, (C,), np.int64),
        "context": spaces.Box(0, 1, (D,), np.float32),
    })
    policy = LLMSlatePolicy(obs_space, spaces.MultiDiscrete([C] * K), lambda _: 1e-4, pretrained_path=result.best_dir)
    # the folder records the log's observation sizes, so the policy can also be rebuilt without spaces
    assert LLMSlatePolicy.from_pretrained(result.best_dir).observation_space == obs_space
    obs = {k: torch.as_tensor(v[:32]) for k, v in logs.items() if k in obs_space.spaces}
    with torch.no_grad():
        greedy = policy._predict(obs, deterministic=True)
    # the cloned policy reproduces most of the behaviour policy's slate items
    overlap = np.mean([len(set(g) & set(s)) / K for g, s in zip(greedy.tolist(), logs["slate"][:32].tolist(), strict=True)])
    assert overlap > 0.6


def test_click_target_on_full_catalog_learns_taste():
    torch.set_num_threads(1)
    logs, emb = synthetic_log(num_users=48, steps=10, seed=1)
    cfg = PretrainConfig(target="click", full_catalog=True, exclude_history=False, epochs=10, batch_size=64,
                         learning_rate=3e-3, patience=2, val_fraction=0.2)
    result = pretrain(logs, emb, config=cfg, model_config=TINY, seed=0, progress=False)
    m = result.metrics
    assert m["val/ndcg@10"] > m["val_before/ndcg@10"] + 0.25, (m["val_before/ndcg@10"], m["val/ndcg@10"])
    assert m["val/num_steps"] == m["val_before/num_steps"] > 0
    assert result.best_dir is None


def test_pretrain_on_simulator_logs(tmp_path):
    from agents.logs import generate_logs, load_logs

    path = tmp_path / "logs.npz"
    generate_logs("longrec/Video-v0", num_users=6, seed=0, path=path, behaviour="noisy_quality")
    data = load_logs(path)
    emb = torch.randn(data.meta["num_items"], 8, generator=torch.Generator().manual_seed(0))
    cfg = PretrainConfig(target="slate", epochs=1, max_batches_per_epoch=3, batch_size=64, val_fraction=0.2)
    result = pretrain(data, emb, config=cfg, model_config=TINY, output_dir=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert np.isfinite(result.metrics["val/loss"]) and 0 <= result.metrics["val/ndcg@10"] <= 1


def test_config_errors():
    with pytest.raises(ValueError, match="target must be one of"):
        PretrainConfig(target="next")
    with pytest.raises(ValueError, match="full_catalog=True needs target='click'"):
        PretrainConfig(target="slate", full_catalog=True)
    logs, emb = synthetic_log(num_users=2, steps=2)
    with pytest.raises(ValueError, match="needs item_embeddings"):
        pretrain(logs, None, config=PretrainConfig(), progress=False)


def test_finetuning_the_text_encoder_during_pretraining(tmp_path):
    """finetune_text_encoder="full": gradients reach the tiny BERT; the best model carries its re-encoded catalog."""
    from llm_policy.text_encoder import ItemTextEncoder
    from llm_policy.tiny import make_tiny_bert

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    adjectives = ["great", "awful", "calm", "loud", "fresh", "stale"]
    topics = ["cats", "jazz", "curry", "budget", "dogs", "news"]
    texts = [f"{adjectives[i % 6]} {topics[(i // 6) % 6]} video number {i}" for i in range(N)]
    good = np.array([t.startswith("great") for t in texts])
    logs, _ = synthetic_log(num_users=20, steps=6, seed=2)
    # behaviour: "great" items first, then the rest in logged order
    for row in range(len(logs["slate"])):
        cand = logs["candidate_item_ids"][row]
        order = np.argsort(~good[cand], kind="stable")[:K]
        logs["slate"][row] = order
        logs["slate_item_ids"][row] = cand[order]
    model_dir = make_tiny_bert(tmp_path / "bert", texts, hidden_size=16, num_attention_heads=2, seed=rng.integers(100))
    enc = ItemTextEncoder(model_dir, cache_dir=tmp_path / "cache", show_progress=False)
    emb = enc.encode(texts)
    before = {n: p.detach().clone() for n, p in enc.model.named_parameters()}
    cfg = PretrainConfig(target="slate", epochs=6, batch_size=32, learning_rate=3e-3, patience=6, val_fraction=0.2,
                         text_encoder_lr=1e-3, finetune_text_encoder="full")
    result = pretrain(logs, emb, config=cfg, model_config=TINY, output_dir=tmp_path / "run",
                      text_encoder=enc, item_texts=texts, progress=False)
    assert any(not torch.equal(before[n], p) for n, p in enc.model.named_parameters())
    m = result.metrics
    assert m["best_epoch"] > 0 and m["val/ndcg@10"] > m["val_before/ndcg@10"] + 0.05
    assert not torch.allclose(result.model.item_embeddings[:N], emb)
    # the saved best text encoder reproduces the embeddings the best model carries
    best_enc = ItemTextEncoder(tmp_path / "run" / "best_text_encoder", cache_dir=tmp_path / "cache2", show_progress=False)
    torch.testing.assert_close(best_enc.encode(texts), result.model.item_embeddings[:N], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="finetune_text_encoder needs text_encoder"):
        pretrain(logs, emb, config=cfg, model_config=TINY, progress=False)
