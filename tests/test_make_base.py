"""The embedded base is cached by recipe: reused when nothing changed, a new one when the recipe changes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from jobs.make_base import cached_base_path, ensure_base, recipe_hash
from rl.config import BaseRecipe


def test_recipe_hash_tracks_every_field_but_threads() -> None:
    base = BaseRecipe()
    assert recipe_hash(base) == recipe_hash(BaseRecipe())
    assert recipe_hash(dataclasses.replace(base, torch_threads=7)) == recipe_hash(base)
    for field, value in [("lr", 1e-3), ("boxed_share", 1.0), ("hidden_size", 64), ("seed", 1)]:
        assert recipe_hash(dataclasses.replace(base, **{field: value})) != recipe_hash(base), field


def test_cached_base_is_reused_not_rebuilt(tiny_base: Path, monkeypatch) -> None:
    report = json.loads((tiny_base / "base.json").read_text())
    stamp = (tiny_base / "base.json").stat().st_mtime_ns
    recipe = BaseRecipe(**report["recipe"])
    assert ensure_base(recipe, output=str(tiny_base)) == tiny_base
    assert (tiny_base / "base.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert report["hash"] == recipe_hash(recipe) and report["sft_steps"] == recipe.max_steps
    monkeypatch.setenv("DISTILLERY_CACHE", "/some/cache")
    assert cached_base_path(recipe) == Path(f"/some/cache/bases/tiny-{recipe_hash(recipe)}")


def test_domain_settings_count_only_when_the_base_includes_the_domain() -> None:
    base = BaseRecipe()
    assert recipe_hash(dataclasses.replace(base, num_agent_demos=5, code_fenced_share=1.0)) == recipe_hash(
        base
    )
    mixed = dataclasses.replace(base, domains=["math", "agent"])
    assert recipe_hash(mixed) != recipe_hash(base)
    assert recipe_hash(dataclasses.replace(mixed, agent_boxed_share=1.0)) != recipe_hash(mixed)
    with pytest.raises(ValueError, match="unknown recipe domain 'poetry'"):
        recipe_hash(dataclasses.replace(base, domains=["math", "poetry"]))
