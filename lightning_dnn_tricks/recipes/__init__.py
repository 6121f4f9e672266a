"""Shipped LightningCLI recipes (YAML files in this folder)."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


def list_recipes() -> dict[str, Path]:
    """Shipped recipes by name (file stem) → path."""
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_description(path: Path) -> str:
    """The recipe's first comment line, without the leading ``#``."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def resolve_recipe(name_or_path: str) -> str:
    """A path for ``name_or_path``: an existing file is kept; a shipped recipe name is resolved."""
    if Path(name_or_path).exists():
        return name_or_path
    recipes = list_recipes()
    stem = Path(name_or_path).stem
    if stem in recipes:
        return str(recipes[stem])
    return name_or_path
