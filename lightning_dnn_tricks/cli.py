"""The ``ldt`` command: LightningCLI recipes plus listings of the shipped tricks and recipes.

Usage::

    ldt list                               # tricks, kind, capabilities, one-line summary
    ldt recipes                            # shipped recipes and where they are
    ldt fit -c norm_loss_digits            # a shipped recipe by name (or any YAML path)
    ldt fit -c my.yaml --trainer.max_epochs 3
    ldt demo                               # the main job: tricks vs baseline on digits

``ldt fit`` (and the other LightningCLI subcommands) add ``callbacks.OptimizerSupport`` to the
Trainer when the config names one of the optimizers that need it and its callbacks lack it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

from lightning_dnn_tricks.recipes import list_recipes, recipe_description, resolve_recipe
from lightning_dnn_tricks.registry import list_tricks

_CONFIG_FLAGS = ("-c", "--config")
_OPTIMIZER_SUPPORT = "lightning_dnn_tricks.callbacks.OptimizerSupport"


def _width() -> int:
    """The terminal's width (``COLUMNS`` first), 80 when there is none (a log, a pipe)."""
    return max(60, shutil.get_terminal_size((80, 24)).columns)


def print_tricks(file: TextIO | None = None) -> None:
    """Print every registered trick: name, kind, summary and capabilities, as plain text.

    Plain text (no table library, no colour) so that it reads the same in a terminal, a log
    and a pipe, and so that the core install needs no ``rich``.
    """
    out = file or sys.stdout
    width = _width()
    print("lightning-dnn-tricks: registered tricks", file=out)
    for spec in list_tricks():
        row = spec.capabilities.as_row()
        summary = spec.summary + (" [reconstruction]" if spec.reconstruction else "")
        capabilities = (
            f"precision: {row['precision']}; strategy: {row['strategy']}; "
            f"accumulation: {row['grad accumulation']}; closure: {row['closure']}"
        )
        print(f"\n{spec.name} ({spec.kind})", file=out)
        for text in (summary, capabilities):
            print(textwrap.fill(text, width, initial_indent="  ", subsequent_indent="  "), file=out)


def print_recipes(file: TextIO | None = None) -> None:
    """Print the shipped recipes with their descriptions and paths, as plain text."""
    out = file or sys.stdout
    width = _width()
    print("Shipped recipes (run with: ldt fit -c NAME)", file=out)
    for name, path in list_recipes().items():
        print(f"\n{name}", file=out)
        text = recipe_description(path)
        print(textwrap.fill(text, width, initial_indent="  ", subsequent_indent="  "), file=out)
        print(f"  {path}", file=out)


def _uses_our_optimizer(config: Any) -> bool:
    """Whether a parsed config names one of the optimizers that need OptimizerSupport."""
    from lightning_dnn_tricks.optim import SGDG2, FrankWolfe

    def walk(value: Any) -> bool:
        if hasattr(value, "items"):  # a jsonargparse Namespace (flattened keys) or a dict
            for key, item in value.items():
                is_path = key == "class_path" or key.endswith(".class_path")
                if is_path and isinstance(item, str) and _resolves_to(item, (SGDG2, FrankWolfe)):
                    return True
                if walk(item):
                    return True
            return False
        if isinstance(value, list | tuple):
            return any(walk(item) for item in value)
        return False

    return walk(config)


def _resolves_to(path: str, classes: tuple[type, ...]) -> bool:
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(found, type) and issubclass(found, classes)


def add_optimizer_support(config: Any) -> bool:
    """Put OptimizerSupport first in a parsed LightningCLI config's ``trainer.callbacks`` when the
    config names one of our closure/anchor optimizers and lists no OptimizerSupport.

    Returns whether it was added. The saved ``config.yaml`` then lists it, so the run can be
    repeated with any LightningCLI.
    """
    from jsonargparse import Namespace

    from lightning_dnn_tricks.callbacks import OptimizerSupport

    trainer = config.get("trainer")
    if trainer is None or not _uses_our_optimizer(config):
        return False
    callbacks = trainer.get("callbacks")
    listed = [] if callbacks is None else callbacks if isinstance(callbacks, list) else [callbacks]
    for callback in listed:
        path = callback.get("class_path") if hasattr(callback, "get") else None
        if isinstance(callback, OptimizerSupport) or (
            isinstance(path, str) and _resolves_to(path, (OptimizerSupport,))
        ):
            return False
    support = Namespace(class_path=_OPTIMIZER_SUPPORT, init_args=Namespace())
    trainer["callbacks"] = [support, *listed]
    return True


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


def run_lightning_cli(args: Sequence[str] | None) -> Any:
    """Run LightningCLI with the library's models and datamodules available by class path, and
    with ``OptimizerSupport`` added when the configured optimizer needs it (see
    :func:`add_optimizer_support`); returns the ``LightningCLI`` instance.

    ``args=None`` lets LightningCLI read ``sys.argv`` itself (recipe names resolved there first).
    """
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    import lightning_dnn_tricks.callbacks
    import lightning_dnn_tricks.data
    import lightning_dnn_tricks.models  # noqa: F401  (makes the short class names resolvable)

    class TricksCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            add_optimizer_support(self.config.get(str(self.subcommand), self.config))

    return TricksCLI(
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
    if command in ("list", "recipes"):
        try:
            (print_tricks if command == "list" else print_recipes)()
        except BrokenPipeError:  # `ldt list | head`: the reader stopped; no traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    elif command == "demo":
        from lightning_dnn_tricks.demo import main as demo_main

        demo_main(args[1:])
    else:
        run_lightning_cli(None if argv is None else args)


if __name__ == "__main__":
    main()
