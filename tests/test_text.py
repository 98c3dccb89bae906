"""Tests for envs.text: domain text specs, item text generation and the quality-leak diagnostic."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from envs.text import (
    SIGNAL_CLASSES,
    TextSpec,
    available_domains,
    generate_item_texts,
    generate_titles_and_descriptions,
    load_text_spec,
    text_quality_auc,
)

BUILT_IN = ("video", "ecommerce", "news", "music")


def _catalog_like(spec: TextSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Topic, quality ~ N(0, 1) and appeal = sigmoid(-quality + N(0, 1)), as the catalog draws them."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(spec.num_topics, size=n)
    quality = rng.standard_normal(n)
    appeal = 1.0 / (1.0 + np.exp(-(-1.0 * quality + rng.standard_normal(n))))
    return topic, quality, appeal


def _minimal_spec_dict() -> dict:
    return {
        "item_noun": "video",
        "title_templates": ["{hook} {adjective} {subject}"],
        "description_templates": ["A {adjective} {subject} {noun} about {topic}. {claim}"],
        "topics": {
            "cooking": {"subject": ["pasta", "bread"]},
            "gaming": {"subject": ["speedrun", "boss fight"]},
        },
        "phrases": {
            "quality": {
                "hook": ["Expert:"],
                "adjective": ["in-depth"],
                "claim": ["Made by a {subject} expert."],
            },
            "sensational": {
                "hook": ["SHOCKING:"],
                "adjective": ["insane"],
                "claim": ["You won't believe it!"],
            },
            "plain": {"hook": [""], "adjective": ["new"], "claim": ["Thanks for watching."]},
        },
    }


@pytest.fixture(scope="module", params=BUILT_IN)
def domain_spec(request: pytest.FixtureRequest) -> TextSpec:
    return load_text_spec(request.param)


def test_built_in_domains_are_available() -> None:
    assert set(BUILT_IN) <= set(available_domains())


def test_domain_spec_loads_with_rich_topics(domain_spec: TextSpec) -> None:
    assert 8 <= domain_spec.num_topics <= 20
    assert len(set(domain_spec.topic_names)) == domain_spec.num_topics
    for t in range(domain_spec.num_topics):
        vocab = domain_spec.topic_vocabulary(t)
        assert sum(len(entries) for entries in vocab.values()) >= 15
    assert domain_spec.marker_slot_names
    assert len(SIGNAL_CLASSES) == len(domain_spec.phrases)


def test_to_dict_round_trips(domain_spec: TextSpec) -> None:
    rebuilt = TextSpec.from_dict(domain_spec.to_dict())
    assert rebuilt == domain_spec
    assert hash(rebuilt) == hash(domain_spec)


def test_same_seed_same_texts_different_seed_different(domain_spec: TextSpec) -> None:
    topic, quality, appeal = _catalog_like(domain_spec, 300, seed=1)
    a = generate_item_texts(domain_spec, topic, quality, appeal, np.random.default_rng(7))
    b = generate_item_texts(domain_spec, topic, quality, appeal, np.random.default_rng(7))
    c = generate_item_texts(domain_spec, topic, quality, appeal, np.random.default_rng(8))
    assert a == b
    assert sum(x != y for x, y in zip(a, c, strict=True)) > 250


def test_number_of_draws_does_not_depend_on_item_properties(domain_spec: TextSpec) -> None:
    # Same generator state afterwards whatever the hidden values: texts never shift later draws.
    topic, quality, appeal = _catalog_like(domain_spec, 200, seed=2)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    generate_item_texts(domain_spec, topic, quality, appeal, rng_a)
    generate_item_texts(domain_spec, topic[::-1].copy(), -quality, 1.0 - appeal, rng_b)
    assert rng_a.random() == rng_b.random()


def test_texts_are_short_varied_and_tidy(domain_spec: TextSpec) -> None:
    topic, quality, appeal = _catalog_like(domain_spec, 2000, seed=4)
    titles, descriptions = generate_titles_and_descriptions(
        domain_spec, topic, quality, appeal, np.random.default_rng(5)
    )
    texts = generate_item_texts(domain_spec, topic, quality, appeal, np.random.default_rng(5))
    assert texts == [t + domain_spec.separator + d for t, d in zip(titles, descriptions, strict=True)]
    words = np.array([len(text.split()) for text in texts])
    assert words.min() >= 8
    assert words.max() <= 45
    assert len(set(titles)) >= 0.9 * len(titles)
    assert len(set(texts)) >= 0.95 * len(texts)
    for part in (*titles, *descriptions):
        assert part and part == part.strip()
        assert "  " not in part and "{" not in part and "}" not in part
        assert not part[0].islower()
        assert " ," not in part and " ." not in part


def test_every_topic_appears_in_its_own_vocabulary(domain_spec: TextSpec) -> None:
    n = 40 * domain_spec.num_topics
    topic = np.repeat(np.arange(domain_spec.num_topics), 40)
    quality, appeal = np.zeros(n), np.full(n, 0.5)
    texts = generate_item_texts(domain_spec, topic, quality, appeal, np.random.default_rng(0))
    for t, text in zip(topic, texts, strict=True):
        own = [e for entries in domain_spec.topic_vocab[t] for e in entries]
        assert any(e in text for e in own), text


def _marker_rate(spec: TextSpec, texts: list[str], cls: str) -> float:
    phrases = [
        p
        for pool in spec.phrases[SIGNAL_CLASSES.index(cls)]
        for p in pool
        if p.strip() and "{" not in p and len(p) > 3
    ]
    return float(np.mean([any(p in t for p in phrases) for t in texts]))


def test_quality_and_appeal_steer_the_wording(domain_spec: TextSpec) -> None:
    n = 600
    topic = np.arange(n) % domain_spec.num_topics

    def texts(q: float, a: float) -> list[str]:
        return generate_item_texts(
            domain_spec, topic, np.full(n, q), np.full(n, a), np.random.default_rng(11)
        )

    good, bad = texts(2.0, 0.5), texts(-2.0, 0.5)
    assert _marker_rate(domain_spec, good, "quality") > _marker_rate(domain_spec, bad, "quality") + 0.3
    bait, calm = texts(0.0, 0.95), texts(0.0, 0.05)
    assert (
        _marker_rate(domain_spec, bait, "sensational") > _marker_rate(domain_spec, calm, "sensational") + 0.3
    )


def test_bag_of_words_recovers_quality_partly(domain_spec: TextSpec) -> None:
    topic, quality, appeal = _catalog_like(domain_spec, 3000, seed=0)
    texts = generate_item_texts(domain_spec, topic, quality, appeal, np.random.default_rng(1))
    auc = text_quality_auc(texts, quality, seed=0)
    assert 0.70 <= auc <= 0.95, auc


def test_auc_is_chance_when_texts_ignore_quality() -> None:
    spec = load_text_spec("video")
    topic, quality, appeal = _catalog_like(spec, 2000, seed=3)
    texts = generate_item_texts(spec, topic, quality, appeal, np.random.default_rng(1))
    unrelated = np.random.default_rng(9).standard_normal(len(texts))
    assert abs(text_quality_auc(texts, unrelated, seed=0) - 0.5) < 0.06


def test_articles_and_capitals_follow_the_inserted_words() -> None:
    spec = TextSpec.from_dict(_minimal_spec_dict())
    n = 400
    topic = np.arange(n) % 2
    quality = np.where(np.arange(n) % 4 < 2, 3.0, -3.0)
    appeal = np.where(np.arange(n) % 4 < 2, 0.0, 1.0)
    titles, descriptions = generate_titles_and_descriptions(
        spec, topic, quality, appeal, np.random.default_rng(0)
    )
    assert any(d.startswith("An in-depth ") for d in descriptions)
    assert any(d.startswith("An insane ") for d in descriptions)
    assert any(d.startswith("A new ") for d in descriptions)
    assert not any(d.startswith(("A in", "An new")) for d in descriptions)
    assert any(t.startswith("New ") for t in titles)  # empty hook: the adjective opens the title
    assert any("Made by a pasta expert." in d for d in descriptions)


def test_load_text_spec_reads_only_the_text_section(tmp_path) -> None:
    import yaml

    path = tmp_path / "toy.yaml"
    path.write_text(
        yaml.safe_dump({"catalog": {"num_items": 5}, "user": {"anything": 1}, "text": _minimal_spec_dict()})
    )
    spec = load_text_spec(path)
    assert spec.topic_names == ("cooking", "gaming")
    assert load_text_spec(str(path)) == spec
    path.write_text(yaml.safe_dump({"catalog": {}}))
    with pytest.raises(ValueError, match="text"):
        load_text_spec(path)
    with pytest.raises(ValueError, match="video"):
        load_text_spec("no_such_domain")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("topics"), "topics"),
        (lambda d: d.pop("item_noun"), "item_noun"),
        (lambda d: d.update(titles=["x"]), r"titles.*title_templates"),
        (lambda d: d["topics"]["gaming"].update(extra=["x"]), "extra"),
        (lambda d: d["topics"]["gaming"].update(subject=[]), r"topics\.gaming\.subject"),
        (lambda d: d["topics"]["gaming"].update(subject=["ok", False]), r"topics\.gaming\.subject\[1\]"),
        (lambda d: d["phrases"].pop("plain"), "plain"),
        (lambda d: d["phrases"]["sensational"].pop("hook"), r"phrases\.sensational"),
        (lambda d: d["title_templates"].append("{subjct} rocks"), "subjct"),
        (lambda d: d["phrases"]["plain"]["claim"].append("{hook} again"), "hook"),
        (lambda d: d.update(signal={"quality_weigth": 1.0}), r"quality_weigth.*quality_weight"),
        (lambda d: d.update(signal={"appeal_weight": "high"}), "appeal_weight"),
        (lambda d: d["description_templates"].append("Watch a {hook}"), "hook"),
        (lambda d: d["topics"].pop("gaming"), "at least 2"),
    ],
)
def test_bad_spec_raises_value_error_naming_the_key(mutate, match: str) -> None:
    d = copy.deepcopy(_minimal_spec_dict())
    mutate(d)
    with pytest.raises(ValueError, match=match):
        TextSpec.from_dict(d)


def test_bad_inputs_raise_value_error() -> None:
    spec = load_text_spec("news")
    rng = np.random.default_rng(0)
    ok_q, ok_a = np.zeros(3), np.full(3, 0.5)
    with pytest.raises(ValueError, match="topic indices"):
        generate_item_texts(spec, np.array([0, 1, spec.num_topics]), ok_q, ok_a, rng)
    with pytest.raises(ValueError, match="appeal"):
        generate_item_texts(spec, np.array([0, 1, 2]), ok_q, np.array([0.5, 1.5, 0.0]), rng)
    with pytest.raises(ValueError, match="shapes"):
        generate_item_texts(spec, np.array([0, 1]), ok_q, ok_a, rng)
    with pytest.raises(ValueError, match="texts"):
        text_quality_auc(["a", "b"], np.zeros(3))
    assert generate_item_texts(spec, np.array([], dtype=np.int64), np.zeros(0), np.zeros(0), rng) == []
