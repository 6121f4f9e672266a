"""The ``ldt`` command: LightningCLI recipes plus listings of the shipped tricks and recipes.

Usage::

    ldt list                               # tricks, kind, capabilities, one-line summary
    ldt recipes                            # shipped recipes and where they are
    ldt fit -c norm_loss_digits            # a shipped recipe by name (or any YAML path)
    ldt fit -c my.yaml --trainer.max_epochs 3
    ldt demo                               # the main job: tricks vs baseline on digits
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from lightning_dnn_tricks.recipes import list_recipes, recipe_description, resolve_recipe
from lightning_dnn_tricks.registry import list_tricks

_CONFIG_FLAGS = ("-c", "--config")


def print_tricks(console: Console | None = None) -> None:
    """Print every registered trick with its kind, capabilities and summary."""
    console = console or Console()
    table = Table(title="lightning-dnn-tricks: registered tricks")
    table.add_column("trick", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("summary", ratio=3)
    for column in ("precision", "strategy", "accumulation", "closure"):
        table.add_column(column, ratio=1)
    for spec in list_tricks():
        row = spec.capabilities.as_row()
        summary = spec.summary + (" [reconstruction]" if spec.reconstruction else "")
        table.add_row(
            spec.name,
            spec.kind,
            summary,
            row["precision"],
            row["strategy"],
            row["grad accumulation"],
            row["closure"],
        )
    console.print(table)


def print_recipes(console: Console | None = None) -> None:
    """Print the shipped recipes with their descriptions and paths."""
    console = console or Console()
    table = Table(title="Shipped recipes (run with: ldt fit -c NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    table.add_column("path", overflow="fold")
    for name, path in list_recipes().items():
        table.add_row(name, recipe_description(path), str(path))
    console.print(table)


def _resolve_config_arguments(args: Sequence[str]) -> list[str]:
    resolved = list(args)
    for index, arg in enumerate(resolved[:-1]):
        if arg in _CONFIG_FLAGS:
            resolved[index + 1] = resolve_recipe(resolved[index + 1])
    for index, arg in enumerate(resolved):
        for flag in _CONFIG_FLAGS:
            if arg.startswith(flag + "="):
                resolved[index] = f"{flag}={resolve_recipe(arg.split('=', 1)[1])}"
    return resolved


def run_lightning_cli(args: Sequence[str] | None) -> None:
    """Run LightningCLI with the library's models and datamodules available by class path.

    ``args=None`` lets LightningCLI read ``sys.argv`` itself (recipe names resolved there first).
    """
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    import lightning_dnn_tricks.callbacks
    import lightning_dnn_tricks.data
    import lightning_dnn_tricks.models  # noqa: F401  (makes the short class names resolvable)

    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if args is None else _resolve_config_arguments(args),
        save_config_kwargs={"overwrite": True},
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ldt`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else ""
    if argv is None:
        sys.argv[1:] = _resolve_config_arguments(args)
    if command == "list":
        print_tricks()
    elif command == "recipes":
        print_recipes()
    elif command == "demo":
        from lightning_dnn_tricks.demo import main as demo_main

        demo_main(args[1:])
    else:
        run_lightning_cli(None if argv is None else args)


if __name__ == "__main__":
    main()
