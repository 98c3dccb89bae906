"""Domain spec files: one YAML per simulated world (``envs/domains/<name>.yaml``).

A domain file holds everything that makes a preset: its description, the
response kind, catalog / session / user dynamics parameters (sections mapped
onto ``envs.config`` dataclasses) and the ``text:`` section for item texts
(``envs.text``). Adding a domain is adding a file.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.catalog import Catalog, sample_catalog
from envs.config import CatalogConfig, SessionConfig, UserConfig, from_mapping
from envs.text import DOMAINS_DIR, TextSpec, available_domains, generate_item_texts

TOP_LEVEL_KEYS = ("name", "version", "description", "response", "catalog", "session", "user", "text")


@dataclass(frozen=True)
class DomainSpec:
    """A parsed domain file."""

    name: str
    description: str
    response: str
    catalog: CatalogConfig
    session: SessionConfig
    user: UserConfig
    text: TextSpec


def domain_path(domain: str | Path) -> Path:
    path = Path(domain)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ValueError(f"domain file {str(path)!r} does not exist")
        return path
    path = DOMAINS_DIR / f"{domain}.yaml"
    if not path.exists():
        raise ValueError(f"unknown domain {str(domain)!r}; built-in domains: {list(available_domains())}")
    return path


@functools.lru_cache(maxsize=32)
def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping with keys {TOP_LEVEL_KEYS}")
    return data


def load_domain(domain: str | Path, **overrides: Any) -> DomainSpec:
    """Parse a domain file; ``overrides`` replace fields of catalog/session/user by name.

    A flat keyword such as ``num_candidates=10`` or ``num_items=500`` goes to the
    section that owns that field; ``user={...}`` replaces several user fields.
    """
    path = domain_path(domain)
    data = _read_yaml(path)
    unknown = [key for key in data if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; valid: {list(TOP_LEVEL_KEYS)}")
    sections = {name: dict(data.get(name) or {}) for name in ("catalog", "session", "user")}
    owners = {
        field.name: section
        for section, cls in (("catalog", CatalogConfig), ("session", SessionConfig), ("user", UserConfig))
        for field in dataclasses.fields(cls)
    }
    for key, value in overrides.items():
        if key in sections and isinstance(value, dict):
            sections[key].update(value)
        elif key in owners:
            sections[owners[key]][key] = value
        else:
            valid = sorted([*owners, "catalog", "session", "user"])
            raise ValueError(f"unknown environment option {key!r}; valid options: {', '.join(valid)}")
    if "text" not in data:
        raise ValueError(f"{path} has no 'text:' section")
    return DomainSpec(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")).strip(),
        response=str(data.get("response", "watch_time")),
        catalog=from_mapping(CatalogConfig, sections["catalog"], "catalog"),
        session=from_mapping(SessionConfig, sections["session"], "session"),
        user=from_mapping(UserConfig, sections["user"], "user"),
        text=TextSpec.from_dict(data["text"]),
    )


@functools.lru_cache(maxsize=16)
def _cached_catalog(domain: str, catalog: CatalogConfig, text: TextSpec, seed: int) -> Catalog:
    rng = np.random.default_rng(seed)

    def texts(topic, quality, appeal, generator):
        return generate_item_texts(text, topic, quality, appeal, generator)

    return sample_catalog(catalog, text.topic_names, texts, rng)


def build_catalog(spec: DomainSpec, seed: int = 0) -> Catalog:
    """The domain's catalog for ``seed`` (cached: every env of a preset shares one world)."""
    return _cached_catalog(spec.name, spec.catalog, spec.text, seed)
