"""Item text generation from domain spec files.

Every catalog item gets a short, deterministic text (a title and a one or two
sentence description) built from a domain's ``text:`` section in
``envs/domains/<domain>.yaml``, so that adding a domain is a data file, not code.

The text reveals the item's hidden properties only partly, the way real titles
do: clickbait wording ("SHOCKING", "you won't believe") is more likely the more
clickbait-y (``appeal``) an item is, and quality wording ("in-depth",
"award-winning", "expert") is more likely the higher its hidden ``quality`` —
both with noise. A text model can therefore learn something an item-ID model
cannot (a cold-start item's quality prior), as in content-based and
LLM-based recommenders (e.g. Hou et al., "Towards Universal Sequence
Representation Learning for Recommender Systems", KDD 2022), while the
simulator keeps the ground truth. The hidden-quality / clickbait split follows
the clickbait-aware recommender literature (Wang et al., "Clicks can be
Cheating: Counterfactual Recommendation for Mitigating Clickbait Issue",
SIGIR 2021).

Generative model
----------------
A text is ``title + separator + description``. Title and description are
``str.format`` templates drawn uniformly per item. Their placeholders are:

* ``{noun}`` (the domain's item noun, e.g. ``video``) and ``{topic}`` (the
  topic's label);
* **topic slots** (e.g. ``{subject}``, ``{format}``, ``{detail}``): one entry is
  drawn uniformly from the item's topic vocabulary;
* **filler slots** (e.g. ``{audience}``): one entry drawn uniformly from a
  domain-wide list; they carry no signal, only variety;
* **marker slots** (e.g. ``{hook}``, ``{adjective}``, ``{claim}``): for each
  marker slot independently a *signal class* is drawn from a softmax over

  ====================  ==================================================
  class                 logit
  ====================  ==================================================
  ``quality``           ``quality_weight * quality + quality_bias``
  ``sensational``       ``appeal_weight * (appeal - 0.5) + sensational_bias``
  ``plain``             ``0``
  ====================  ==================================================

  and the phrase is drawn uniformly from that class's list for the slot.
  Phrases may themselves use ``{noun}``, ``{topic}``, topic and filler slots
  (e.g. ``"Presented by an award-winning {expert}."``).

Light grammar without per-item regexes: templates are rewritten once when the
spec is built, so that ``a {slot}`` / ``A {slot}`` get the article that agrees
with the drawn word (``an in-depth``, ``a new``) and a slot that opens a
sentence (after ``.``/``!``/``?``, or after a slot whose drawn value ends one)
is capitalised. After formatting, whitespace left by empty slots is collapsed,
spaces before punctuation are removed and the first letter is capitalised.
Writing ``a {slot}`` for a slot with empty entries is an error.

Every random draw happens up front in a few vectorised numpy calls whose number
depends only on the number of items and the spec, so the same generator state
gives the same texts, and the hidden values never shift later draws.

Schema of the ``text:`` section
-------------------------------
``item_noun`` (str, required)
    What an item is called: ``video``, ``product``, ``article``, ``track``.
``title_templates``, ``description_templates`` (non-empty lists of str, required)
    ``str.format`` templates using the placeholders above.
``topics`` (mapping, required, at least 2 entries)
    ``topic_name -> {slot_name: [entries...], ...}``. Topic order is the topic
    index order. Every topic must define the same slot names, each a non-empty
    list of strings. An optional ``label`` string (default: the name with
    underscores replaced by spaces) fills ``{topic}``.
``phrases`` (mapping, required)
    ``{quality: {slot: [...]}, sensational: {slot: [...]}, plain: {slot: [...]}}``;
    the three classes must define the same marker slot names. Empty strings
    are allowed (a slot may stay empty, e.g. no hook).
``fillers`` (mapping, optional)
    ``slot_name -> [entries...]``, signal-free domain-wide slots.
``signal`` (mapping, optional)
    ``quality_weight`` (default 1.5), ``quality_bias`` (-1.0),
    ``appeal_weight`` (5.0), ``sensational_bias`` (-1.0): the class logits above.
``separator`` (str, optional, default ``"\\n"``)
    Put between title and description.

Slot names must be Python identifiers and unique across topic, filler and marker
slots; ``noun`` and ``topic`` are reserved. Unknown keys are errors that name the
valid ones. Other top-level keys of the YAML file (``catalog:``, ``user:``, ...)
are ignored by :func:`load_text_spec`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SIGNAL_CLASSES",
    "DOMAINS_DIR",
    "SignalSpec",
    "TextSpec",
    "available_domains",
    "generate_item_texts",
    "generate_titles_and_descriptions",
    "load_text_spec",
    "text_quality_auc",
]

SIGNAL_CLASSES: tuple[str, ...] = ("quality", "sensational", "plain")
"""Marker-phrase classes, in the order used by :attr:`TextSpec.phrases`."""

DOMAINS_DIR = Path(__file__).resolve().parent / "domains"
"""Folder holding the built-in domain files ``<name>.yaml``."""

_RESERVED_PLACEHOLDERS = ("noun", "topic")
_SPEC_KEYS = (
    "item_noun",
    "title_templates",
    "description_templates",
    "topics",
    "phrases",
    "fillers",
    "signal",
    "separator",
)
_REQUIRED_SPEC_KEYS = ("item_noun", "title_templates", "description_templates", "topics", "phrases")


@dataclass(frozen=True)
class SignalSpec:
    """How strongly hidden item properties steer the choice of marker phrases."""

    quality_weight: float = 1.5
    """Slope of the ``quality`` class logit in the item's hidden quality."""
    quality_bias: float = -1.0
    """Offset of the ``quality`` class logit (lower: quality phrases rarer)."""
    appeal_weight: float = 5.0
    """Slope of the ``sensational`` class logit in ``appeal - 0.5``."""
    sensational_bias: float = -1.0
    """Offset of the ``sensational`` class logit (lower: clickbait phrases rarer)."""

    @staticmethod
    def from_dict(d: Mapping[str, Any] | None) -> SignalSpec:
        """Build from the optional ``signal:`` mapping; missing keys keep defaults."""
        if d is None:
            return SignalSpec()
        if not isinstance(d, Mapping):
            raise ValueError(f"text.signal must be a mapping, got {type(d).__name__}")
        valid = tuple(SignalSpec.__dataclass_fields__)
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in text.signal; valid keys: {list(valid)}")
        values = {}
        for key, value in d.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise ValueError(f"text.signal.{key} must be a finite number, got {value!r}")
            values[key] = float(value)
        return SignalSpec(**values)


@dataclass(frozen=True)
class TextSpec:
    """A domain's vocabulary and templates for item texts (the YAML ``text:`` section).

    Nested lists are stored as tuples so the spec is immutable and hashable.
    Build it with :meth:`from_dict` or :func:`load_text_spec`.
    """

    item_noun: str
    """What an item is called (``video``, ``product``, ``article``, ``track``)."""
    topic_names: tuple[str, ...]
    """Topic names; index ``t`` is topic ``t`` of the catalog."""
    topic_labels: tuple[str, ...]
    """Human-readable topic labels that fill ``{topic}``."""
    topic_slot_names: tuple[str, ...]
    """Placeholders filled from the item's topic vocabulary."""
    topic_vocab: tuple[tuple[tuple[str, ...], ...], ...]
    """``topic_vocab[topic][slot]`` -> entries of that topic slot."""
    marker_slot_names: tuple[str, ...]
    """Placeholders filled by signal-dependent phrases."""
    phrases: tuple[tuple[tuple[str, ...], ...], ...]
    """``phrases[class][slot]`` -> phrases; classes ordered as :data:`SIGNAL_CLASSES`."""
    title_templates: tuple[str, ...]
    """``str.format`` templates for titles."""
    description_templates: tuple[str, ...]
    """``str.format`` templates for descriptions."""
    filler_slot_names: tuple[str, ...] = ()
    """Placeholders filled from signal-free domain-wide lists."""
    fillers: tuple[tuple[str, ...], ...] = ()
    """``fillers[slot]`` -> entries."""
    signal: SignalSpec = field(default_factory=SignalSpec)
    """Strength of the quality / appeal signal in the marker phrases."""
    separator: str = "\n"
    """Put between title and description."""
    _compiled: _Compiled = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Rewrites templates once so generation needs no per-item regex; also validates articles.
        object.__setattr__(self, "_compiled", _compile(self))

    @property
    def num_topics(self) -> int:
        """Number of topics."""
        return len(self.topic_names)

    def topic_vocabulary(self, topic: int | str) -> dict[str, tuple[str, ...]]:
        """Slot name -> entries for one topic (by index or name)."""
        index = self._topic_index(topic)
        return dict(zip(self.topic_slot_names, self.topic_vocab[index], strict=True))

    def _topic_index(self, topic: int | str) -> int:
        if isinstance(topic, str):
            if topic not in self.topic_names:
                raise ValueError(f"unknown topic {topic!r}; valid topics: {list(self.topic_names)}")
            return self.topic_names.index(topic)
        if not 0 <= int(topic) < self.num_topics:
            raise ValueError(f"topic index {topic} out of range [0, {self.num_topics})")
        return int(topic)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TextSpec:
        """Validate a ``text:`` mapping (parsed YAML) and build the spec.

        Raises ``ValueError`` naming the missing, unknown or malformed key and
        the valid alternatives.
        """
        _check_spec_keys(d)
        item_noun = d["item_noun"]
        if not isinstance(item_noun, str) or not item_noun.strip():
            raise ValueError(f"text.item_noun must be a non-empty string, got {item_noun!r}")
        separator = d.get("separator", "\n")
        if not isinstance(separator, str):
            raise ValueError(f"text.separator must be a string, got {separator!r}")
        topic_names, topic_labels, topic_slot_names, topic_vocab = _parse_topics(d["topics"])
        marker_slot_names, phrases = _parse_phrases(d["phrases"])
        fillers_raw = d.get("fillers") or {}
        if not isinstance(fillers_raw, Mapping):
            raise ValueError("text.fillers must be a mapping of slot name -> list of strings")
        filler_slot_names = tuple(fillers_raw)
        fillers = tuple(
            _string_list(fillers_raw[s], f"text.fillers.{s}", allow_empty=True) for s in filler_slot_names
        )
        _check_slot_names(topic_slot_names, filler_slot_names, marker_slot_names)
        title_templates = _string_list(d["title_templates"], "text.title_templates", allow_empty=False)
        description_templates = _string_list(
            d["description_templates"], "text.description_templates", allow_empty=False
        )
        _check_spec_placeholders(
            title_templates=title_templates,
            description_templates=description_templates,
            topic_names=topic_names,
            topic_slot_names=topic_slot_names,
            topic_vocab=topic_vocab,
            marker_slot_names=marker_slot_names,
            phrases=phrases,
            filler_slot_names=filler_slot_names,
            fillers=fillers,
        )
        return TextSpec(
            item_noun=item_noun.strip(),
            topic_names=topic_names,
            topic_labels=topic_labels,
            topic_slot_names=topic_slot_names,
            topic_vocab=topic_vocab,
            marker_slot_names=marker_slot_names,
            phrases=phrases,
            title_templates=title_templates,
            description_templates=description_templates,
            filler_slot_names=filler_slot_names,
            fillers=fillers,
            signal=SignalSpec.from_dict(d.get("signal")),
            separator=separator,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``text:`` mapping this spec was built from (``from_dict(to_dict())`` round-trips)."""
        topics: dict[str, dict[str, Any]] = {}
        for name, label, vocab in zip(self.topic_names, self.topic_labels, self.topic_vocab, strict=True):
            entry: dict[str, Any] = {}
            if label != name.replace("_", " "):
                entry["label"] = label
            entry.update({s: list(v) for s, v in zip(self.topic_slot_names, vocab, strict=True)})
            topics[name] = entry
        return {
            "item_noun": self.item_noun,
            "title_templates": list(self.title_templates),
            "description_templates": list(self.description_templates),
            "topics": topics,
            "phrases": {
                cls: {s: list(p) for s, p in zip(self.marker_slot_names, self.phrases[ci], strict=True)}
                for ci, cls in enumerate(SIGNAL_CLASSES)
            },
            "fillers": {s: list(v) for s, v in zip(self.filler_slot_names, self.fillers, strict=True)},
            "signal": {k: getattr(self.signal, k) for k in SignalSpec.__dataclass_fields__},
            "separator": self.separator,
        }


def _check_spec_keys(d: Any) -> None:
    """``d`` is a mapping with every required ``text:`` key and no unknown one."""
    if not isinstance(d, Mapping):
        raise ValueError(f"text spec must be a mapping, got {type(d).__name__}")
    missing = [k for k in _REQUIRED_SPEC_KEYS if k not in d]
    if missing:
        raise ValueError(
            f"text spec is missing required key(s) {missing}; valid keys: {list(_SPEC_KEYS)}"
        )
    unknown = sorted(set(d) - set(_SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in text spec; valid keys: {list(_SPEC_KEYS)}")


def _parse_topics(
    topics: Any,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[tuple[tuple[str, ...], ...], ...]]:
    """``text.topics`` -> names, labels, slot names and ``vocab[topic][slot]``; every topic has the same slots."""
    if not isinstance(topics, Mapping) or len(topics) < 2:
        raise ValueError("text.topics must be a mapping of at least 2 topic names to slot lists")
    topic_names: list[str] = []
    topic_labels: list[str] = []
    topic_vocab: list[tuple[tuple[str, ...], ...]] = []
    topic_slot_names: tuple[str, ...] | None = None
    for name, slots in topics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"text.topics keys must be non-empty strings, got {name!r}")
        if not isinstance(slots, Mapping):
            raise ValueError(f"text.topics.{name} must be a mapping of slot name -> list of strings")
        label = slots.get("label", name.replace("_", " "))
        if not isinstance(label, str) or not label:
            raise ValueError(f"text.topics.{name}.label must be a non-empty string, got {label!r}")
        slot_names = tuple(k for k in slots if k != "label")
        if topic_slot_names is None:
            if not slot_names:
                raise ValueError(f"text.topics.{name} defines no slots")
            topic_slot_names = slot_names
        elif set(slot_names) != set(topic_slot_names):
            raise ValueError(
                f"text.topics.{name} has slots {sorted(slot_names)} but the first topic has "
                f"{sorted(topic_slot_names)}; every topic must define the same slots"
            )
        topic_names.append(name)
        topic_labels.append(label)
        topic_vocab.append(
            tuple(
                _string_list(slots[s], f"text.topics.{name}.{s}", allow_empty=False)
                for s in topic_slot_names
            )
        )
    assert topic_slot_names is not None
    return tuple(topic_names), tuple(topic_labels), topic_slot_names, tuple(topic_vocab)


def _parse_phrases(phrases_raw: Any) -> tuple[tuple[str, ...], tuple[tuple[tuple[str, ...], ...], ...]]:
    """``text.phrases`` -> marker slot names and ``phrases[class][slot]``; the three classes share slot names."""
    if not isinstance(phrases_raw, Mapping):
        raise ValueError("text.phrases must be a mapping with keys " + str(list(SIGNAL_CLASSES)))
    bad_classes = sorted(set(phrases_raw) ^ set(SIGNAL_CLASSES))
    if bad_classes:
        raise ValueError(
            f"text.phrases must have exactly the classes {list(SIGNAL_CLASSES)}; "
            f"missing or unknown: {bad_classes}"
        )
    marker_slot_names: tuple[str, ...] | None = None
    for cls in SIGNAL_CLASSES:
        pools = phrases_raw[cls]
        if not isinstance(pools, Mapping) or not pools:
            raise ValueError(f"text.phrases.{cls} must be a non-empty mapping of slot name -> phrases")
        if marker_slot_names is None:
            marker_slot_names = tuple(pools)
        elif set(pools) != set(marker_slot_names):
            raise ValueError(
                f"text.phrases.{cls} has slots {sorted(pools)} but text.phrases.{SIGNAL_CLASSES[0]} has "
                f"{sorted(marker_slot_names)}; every class must define the same slots"
            )
    assert marker_slot_names is not None
    phrases = tuple(
        tuple(
            _string_list(phrases_raw[cls][s], f"text.phrases.{cls}.{s}", allow_empty=True)
            for s in marker_slot_names
        )
        for cls in SIGNAL_CLASSES
    )
    return marker_slot_names, phrases


def _check_slot_names(
    topic_slot_names: Sequence[str], filler_slot_names: Sequence[str], marker_slot_names: Sequence[str]
) -> None:
    """Slot names are identifiers, unique across kinds, and not reserved."""
    seen: dict[str, str] = {}
    for kind, names in (
        ("topic", topic_slot_names),
        ("filler", filler_slot_names),
        ("marker", marker_slot_names),
    ):
        for slot in names:
            if not isinstance(slot, str) or not slot.isidentifier():
                raise ValueError(f"{kind} slot name {slot!r} must be a Python identifier")
            if slot in _RESERVED_PLACEHOLDERS:
                raise ValueError(
                    f"{kind} slot name {slot!r} is reserved; reserved: {list(_RESERVED_PLACEHOLDERS)}"
                )
            if slot in seen:
                raise ValueError(f"slot name {slot!r} is used as both a {seen[slot]} and a {kind} slot")
            seen[slot] = kind


def _check_spec_placeholders(
    *,
    title_templates: Sequence[str],
    description_templates: Sequence[str],
    topic_names: Sequence[str],
    topic_slot_names: Sequence[str],
    topic_vocab: Sequence[Sequence[Sequence[str]]],
    marker_slot_names: Sequence[str],
    phrases: Sequence[Sequence[Sequence[str]]],
    filler_slot_names: Sequence[str],
    fillers: Sequence[Sequence[str]],
) -> None:
    """Templates and phrases use only known placeholders; phrases cannot nest markers; entries use none."""
    all_slots = (*_RESERVED_PLACEHOLDERS, *topic_slot_names, *filler_slot_names, *marker_slot_names)
    inner_slots = (*_RESERVED_PLACEHOLDERS, *topic_slot_names, *filler_slot_names)
    for where, templates in (
        ("title_templates", title_templates),
        ("description_templates", description_templates),
    ):
        for template in templates:
            _check_placeholders(template, f"text.{where}", all_slots)
    for ci, cls in enumerate(SIGNAL_CLASSES):
        for si, slot in enumerate(marker_slot_names):
            for phrase in phrases[ci][si]:
                _check_placeholders(phrase, f"text.phrases.{cls}.{slot}", inner_slots)
    for ti, name in enumerate(topic_names):
        for si, slot in enumerate(topic_slot_names):
            for entry in topic_vocab[ti][si]:
                _check_placeholders(entry, f"text.topics.{name}.{slot}", ())
    for si, slot in enumerate(filler_slot_names):
        for entry in fillers[si]:
            _check_placeholders(entry, f"text.fillers.{slot}", ())


def _string_list(value: Any, where: str, *, allow_empty: bool) -> tuple[str, ...]:
    """Validate a non-empty list of strings (YAML turns bare ``yes``/``no``/numbers into non-strings)."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{where} must be a non-empty list of strings, got {value!r}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"{where}[{i}] must be a string (quote it in YAML), got {item!r}")
        if not allow_empty and not item.strip():
            raise ValueError(f"{where}[{i}] must be a non-empty string")
        out.append(item)
    return tuple(out)


def _check_placeholders(text: str, where: str, valid: Sequence[str]) -> None:
    """Raise if ``text`` is not a valid format string over the ``valid`` placeholder names."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise ValueError(
            f"{where}: malformed template {text!r} ({err}); use {{{{ }}}} for literal braces"
        ) from err
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in valid or spec or conversion:
            raise ValueError(
                f"{where}: unknown placeholder {{{name}}} in {text!r}; valid placeholders: {list(valid)}"
            )


def available_domains() -> tuple[str, ...]:
    """Names of the built-in domain files in :data:`DOMAINS_DIR`."""
    return tuple(sorted(p.stem for p in DOMAINS_DIR.glob("*.yaml")))


def load_text_spec(domain: str | Path) -> TextSpec:
    """Load the ``text:`` section of a domain: a built-in name (``video``) or a YAML path.

    Only the ``text:`` key is read; other top-level keys are left to their owners.
    """
    import yaml  # light, and only needed here

    path = Path(domain)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = DOMAINS_DIR / f"{domain}.yaml"
        if not path.exists():
            raise ValueError(f"unknown domain {str(domain)!r}; built-in domains: {list(available_domains())}")
    elif not path.exists():
        raise ValueError(f"domain file {str(path)!r} does not exist")
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, Mapping) or "text" not in data:
        keys = list(data) if isinstance(data, Mapping) else []
        raise ValueError(f"{path} has no top-level 'text:' section (top-level keys: {keys})")
    try:
        return TextSpec.from_dict(data["text"])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


# "a " / "A " right before a placeholder (the article is then chosen per item).
_ARTICLE_END = re.compile(r"(?:^|(?<=[\s(\"]))([aA]) $")
_AN_EXCEPTIONS = ("one", "once", "uni", "use", "usu", "uti", "eu", "ewe")
_AN_SILENT_H = ("hour", "honest", "honour", "honor", "heir")
_PUNCT_FIXES = (
    (" ,", ","),
    (" .", "."),
    (" !", "!"),
    (" ?", "?"),
    (" :", ":"),
    (" ;", ";"),
    (" )", ")"),
    ("!.", "!"),
    ("?.", "?"),
    ("..", "."),
    (": :", ":"),
)


def _indefinite_article(phrase: str) -> str:
    """``a`` or ``an`` for the phrase that follows (spelling heuristic, good for authored vocabularies)."""
    word = phrase.lower()
    if word.startswith(_AN_SILENT_H) or word[:1] == "8" or word.startswith(("11", "18")):
        return "an"
    if word and word[0] in "aeiou" and not word.startswith(_AN_EXCEPTIONS):
        return "an"
    return "a"


@dataclass(frozen=True)
class _Compiled:
    """Templates rewritten so that a/an and sentence capitals need no per-item regex.

    ``a {slot}`` becomes ``{slot__a}`` (``A {slot}`` -> ``{slot__A}``) and a slot
    opening a sentence becomes ``{slot__cap}``; the derived fields are computed
    per item from the slot's value.
    """

    title_templates: tuple[str, ...]
    description_templates: tuple[str, ...]
    phrases: tuple[tuple[tuple[str, ...], ...], ...]
    early_derived: tuple[tuple[str, str, str, str], ...]
    """``(slot, kind, condition slot, field name)`` derived from topic / filler slots (used in phrases too)."""
    late_derived: tuple[tuple[str, str, str, str], ...]
    """``(slot, kind, condition slot, field name)`` that depend on marker slots."""
    articles: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    """Cache phrase -> ``"a phrase"`` / ``"an phrase"`` (the vocabularies are small)."""


def _rewrite(template: str, needs: set[tuple[str, str, str]], sentence_enders: frozenset[str]) -> str:
    """Rewrite ``a {x}`` to ``{x__a}`` and a sentence-opening ``{x}`` to ``{x__cap}``.

    A slot opens a sentence after ``.``/``!``/``?`` or right after a slot in
    ``sentence_enders`` (slots whose values may end a sentence); the first letter
    of a whole title or description is capitalised by ``_tidy``.
    """
    out: list[str] = []
    previous: str | None = None
    for literal, name, _, _ in string.Formatter().parse(template):
        escaped = literal.replace("{", "{{").replace("}", "}}")
        if name is None:
            out.append(escaped)
            break
        stripped = literal.rstrip()
        article = _ARTICLE_END.search(literal)
        if article is not None:
            kind = "a" if article.group(1) == "a" else "A"
            needs.add((name, kind, ""))
            out.append(escaped[: article.start(1)] + "{" + name + "__" + kind + "}")
        elif stripped.endswith((".", "!", "?")):
            needs.add((name, "cap", ""))
            out.append(escaped + "{" + name + "__cap}")
        elif not stripped and previous in sentence_enders:
            # Capitalise only when this item's value of the previous slot ends a sentence.
            needs.add((name, "cap", previous))
            out.append(escaped + "{" + name + "__cap_" + previous + "}")
        else:
            out.append(escaped + "{" + name + "}")
        previous = name
    return "".join(out)


def _compile(spec: TextSpec) -> _Compiled:
    needs: set[tuple[str, str, str]] = set()
    all_values = [
        *zip(spec.marker_slot_names, zip(*spec.phrases, strict=True), strict=True),
        *zip(spec.filler_slot_names, ((v,) for v in spec.fillers), strict=True),
        *zip(spec.topic_slot_names, zip(*spec.topic_vocab, strict=True), strict=True),
    ]
    enders = frozenset(
        slot
        for slot, groups in all_values
        if any(v.rstrip().endswith((".", "!", "?")) for g in groups for v in g)
    )
    titles = tuple(_rewrite(t, needs, enders) for t in spec.title_templates)
    descriptions = tuple(_rewrite(t, needs, enders) for t in spec.description_templates)
    phrases = tuple(
        tuple(tuple(_rewrite(p, needs, enders) for p in pool) for pool in cls) for cls in spec.phrases
    )
    can_be_empty = {
        slot for slot, entries in zip(spec.filler_slot_names, spec.fillers, strict=True) if "" in entries
    }
    can_be_empty |= {
        slot for s, slot in enumerate(spec.marker_slot_names) if any("" in pools[s] for pools in spec.phrases)
    }
    for slot, kind, _ in sorted(needs):
        if kind in ("a", "A") and slot in can_be_empty:
            raise ValueError(
                f"a template or phrase writes '{kind} {{{slot}}}' but slot {slot!r} has empty entries, "
                f"so the article could dangle; remove the empty entries or the article"
            )
    marker = set(spec.marker_slot_names)
    named = sorted((s, k, c, s + "__" + k + ("_" + c if c else "")) for s, k, c in needs)
    early = tuple(n for n in named if n[0] not in marker and n[2] not in marker)
    late = tuple(n for n in named if n[0] in marker or n[2] in marker)
    return _Compiled(titles, descriptions, phrases, early, late)


def _derive(
    fields: dict[str, str], derived: tuple[tuple[str, str, str, str], ...], articles: dict[str, str]
) -> None:
    """Add the capitalised / article-prefixed fields that the compiled templates use."""
    for slot, kind, condition, name in derived:
        value = fields[slot]
        if kind == "cap":
            if not condition or fields[condition].rstrip().endswith((".", "!", "?")):
                value = value[:1].upper() + value[1:]
            fields[name] = value
        else:
            with_article = articles.get(value)
            if with_article is None:
                with_article = articles[value] = _indefinite_article(value) + " " + value
            fields[name] = with_article if kind == "a" else with_article[:1].upper() + with_article[1:]


def _tidy(text: str) -> str:
    """Collapse whitespace (empty slots), fix spacing before punctuation, capitalise the first letter."""
    text = " ".join(text.split())
    for bad, good in _PUNCT_FIXES:
        if bad in text:
            text = text.replace(bad, good)
    text = text.lstrip(",:;-| ")
    return text[:1].upper() + text[1:]


def _uniform_index(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """One uniform index in ``[0, sizes[i])`` per entry (one vectorised draw)."""
    u = rng.random(sizes.shape)
    return np.minimum((u * sizes).astype(np.int64), sizes - 1)


def _class_probabilities(spec: TextSpec, quality: np.ndarray, appeal: np.ndarray) -> np.ndarray:
    """``(N, 3)`` softmax probabilities of the marker classes (order of :data:`SIGNAL_CLASSES`)."""
    s = spec.signal
    logits = np.stack(
        [
            s.quality_weight * quality + s.quality_bias,
            s.appeal_weight * (appeal - 0.5) + s.sensational_bias,
            np.zeros_like(quality),
        ],
        axis=1,
    )
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def _item_arrays(
    spec: TextSpec, topic: np.ndarray, quality: np.ndarray, appeal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(N,)`` topic indices (int), quality and appeal (float64) for text generation."""
    topic = np.asarray(topic)
    quality = np.asarray(quality, dtype=np.float64)
    appeal = np.asarray(appeal, dtype=np.float64)
    if topic.ndim != 1 or quality.shape != topic.shape or appeal.shape != topic.shape:
        raise ValueError(
            f"topic, quality and appeal must be 1-d arrays of one length, got shapes "
            f"{topic.shape}, {quality.shape}, {appeal.shape}"
        )
    if not np.issubdtype(topic.dtype, np.integer):
        raise ValueError(f"topic must be an integer array, got dtype {topic.dtype}")
    n = topic.shape[0]
    if n and (topic.min() < 0 or topic.max() >= spec.num_topics):
        raise ValueError(
            f"topic indices must lie in [0, {spec.num_topics}) for this spec "
            f"({spec.num_topics} topics: {list(spec.topic_names)}), got range [{topic.min()}, {topic.max()}]"
        )
    if not (np.all(np.isfinite(quality)) and np.all(np.isfinite(appeal))):
        raise ValueError("quality and appeal must be finite")
    if n and (appeal.min() < 0.0 or appeal.max() > 1.0):
        raise ValueError(f"appeal must lie in [0, 1], got range [{appeal.min()}, {appeal.max()}]")
    return topic, quality, appeal


def generate_titles_and_descriptions(
    spec: TextSpec,
    topic: np.ndarray,
    quality: np.ndarray,
    appeal: np.ndarray,
    rng: np.random.Generator,
) -> tuple[list[str], list[str]]:
    """Titles and descriptions of N items (see the module docstring for the model).

    Args:
        spec: the domain's text spec.
        topic: ``(N,)`` int topic index per item, in ``[0, spec.num_topics)``.
        quality: ``(N,)`` hidden quality (real, roughly standard normal).
        appeal: ``(N,)`` clickbait-ness in ``[0, 1]``.
        rng: the only source of randomness; the number of draws depends only on N
            and the spec, so the same generator state gives the same texts.
    """
    topic, quality, appeal = _item_arrays(spec, topic, quality, appeal)
    n = topic.shape[0]

    # All random draws happen here, vectorised, in a fixed order.
    title_idx = rng.integers(len(spec.title_templates), size=n)
    desc_idx = rng.integers(len(spec.description_templates), size=n)
    topic_sizes = np.array([[len(v) for v in vocab] for vocab in spec.topic_vocab], dtype=np.int64)
    topic_pick = _uniform_index(rng, topic_sizes[topic])  # (N, topic slots)
    filler_sizes = np.array([len(v) for v in spec.fillers], dtype=np.int64)
    filler_pick = _uniform_index(rng, np.broadcast_to(filler_sizes, (n, len(spec.fillers))))
    probs = _class_probabilities(spec, quality, appeal)
    cum = np.cumsum(probs, axis=1)
    u = rng.random((n, len(spec.marker_slot_names)))
    marker_class = (u[:, :, None] > cum[:, None, :-1]).sum(axis=2)  # (N, marker slots) in {0, 1, 2}
    phrase_sizes = np.array([[len(p) for p in pools] for pools in spec.phrases], dtype=np.int64)
    marker_pick = _uniform_index(rng, phrase_sizes[marker_class, np.arange(len(spec.marker_slot_names))])

    # Python lists: indexing them per item is much faster than indexing numpy arrays.
    compiled = spec._compiled
    topic_slots = tuple(enumerate(spec.topic_slot_names))
    filler_slots = tuple(zip(spec.filler_slot_names, spec.fillers, strict=True))
    marker_slots = tuple(enumerate(spec.marker_slot_names))
    titles: list[str] = []
    descriptions: list[str] = []
    for t, t_pick, f_pick, m_class, m_pick, ti, di in zip(
        topic.tolist(),
        topic_pick.tolist(),
        filler_pick.tolist(),
        marker_class.tolist(),
        marker_pick.tolist(),
        title_idx.tolist(),
        desc_idx.tolist(),
        strict=True,
    ):
        vocab = spec.topic_vocab[t]
        fields = {"noun": spec.item_noun, "topic": spec.topic_labels[t]}
        for s, slot in topic_slots:
            fields[slot] = vocab[s][t_pick[s]]
        for (slot, entries), pick in zip(filler_slots, f_pick, strict=True):
            fields[slot] = entries[pick]
        if compiled.early_derived:
            _derive(fields, compiled.early_derived, compiled.articles)
        for s, slot in marker_slots:
            phrase = compiled.phrases[m_class[s]][s][m_pick[s]]
            fields[slot] = phrase.format_map(fields) if "{" in phrase else phrase
        if compiled.late_derived:
            _derive(fields, compiled.late_derived, compiled.articles)
        titles.append(_tidy(compiled.title_templates[ti].format_map(fields)))
        descriptions.append(_tidy(compiled.description_templates[di].format_map(fields)))
    return titles, descriptions


def generate_item_texts(
    spec: TextSpec,
    topic: np.ndarray,
    quality: np.ndarray,
    appeal: np.ndarray,
    rng: np.random.Generator,
) -> list[str]:
    """One text per item: ``title + spec.separator + description``.

    Quality phrases become more likely with ``quality`` and sensational phrases
    with ``appeal`` (see the module docstring); deterministic for a given
    generator state. Arguments as in :func:`generate_titles_and_descriptions`.
    """
    titles, descriptions = generate_titles_and_descriptions(spec, topic, quality, appeal, rng)
    return [t + spec.separator + d for t, d in zip(titles, descriptions, strict=True)]


def text_quality_auc(
    texts: Sequence[str], quality: np.ndarray, seed: int = 0, test_fraction: float = 0.3
) -> float:
    """Held-out ROC-AUC of a bag-of-words logistic regression predicting ``quality > median``.

    A diagnostic of how much hidden quality the texts reveal: 0.5 means none,
    1.0 means the texts give quality away. Uses scikit-learn (imported lazily so
    that ``envs`` stays import-light): unigram + bigram counts, L2 logistic
    regression, a stratified ``test_fraction`` split seeded by ``seed``.
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    quality = np.asarray(quality, dtype=np.float64)
    if len(texts) != quality.shape[0]:
        raise ValueError(f"got {len(texts)} texts but {quality.shape[0]} quality values")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    labels = (quality > np.median(quality)).astype(np.int64)
    if labels.min() == labels.max():
        raise ValueError("quality has a single value; the above-median label is constant")
    train_x, test_x, train_y, test_y = train_test_split(
        list(texts), labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    vectorizer = CountVectorizer(ngram_range=(1, 2), min_df=2, binary=True)
    model = LogisticRegression(C=1.0, max_iter=2000)
    model.fit(vectorizer.fit_transform(train_x), train_y)
    scores = model.predict_proba(vectorizer.transform(test_x))[:, 1]
    return float(roc_auc_score(test_y, scores))
