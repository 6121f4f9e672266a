"""The ``ldt`` command: LightningCLI recipes plus listings of the shipped tricks and recipes.

Usage::

    ldt                                    # the commands and the shipped recipes
    ldt list                               # tricks: kind, capabilities, class path, docs page
    ldt list --json                        # the same, machine-readable
    ldt recipes                            # shipped recipes and where they are
    ldt fit -c norm_loss_digits            # a shipped recipe by name (or any YAML path)
    ldt fit -c my.yaml --trainer.max_epochs 3
    ldt demo                               # the main job: tricks vs baseline on digits

``ldt fit`` (and the other LightningCLI subcommands) add ``callbacks.OptimizerSupport`` to the
Trainer when the config names one of the optimizers that need it and its callbacks lack it.

Errors. A ``-c`` value that is neither a file nor a shipped recipe prints one line with the
closest recipe names and exits with status 2. A trick's configuration error (a value its
constructor refuses, such as ``strength: -1``, or a ``TrickConfigurationError`` at ``setup``)
prints one line, ``ldt: error: ...``, naming the value and the fix, and exits with status 2.
The full traceback is shown instead when ``--traceback`` is on the command line (anywhere; ``ldt``
removes it before LightningCLI parses the rest) or the environment variable ``LDT_TRACEBACK`` is
``1``.

Progress in logs. When standard output is not a terminal (a log file, a pipe, a batch job) and the
Trainer's progress bar is enabled with no progress-bar callback configured, ``ldt`` gives the
Trainer Lightning's ``TQDMProgressBar`` with ``leave=True`` and no nested validation bar during
``fit`` (``callbacks._log_progress.LogProgressBar``): it writes to standard output and ends each
epoch's bar with a newline, so a log shows one line per epoch with its metrics, validation
included (Lightning's ``TQDM_MINITERS=N`` environment variable updates it every N batches
only). The saved ``config.yaml`` does not list it. In a terminal, Lightning's own choice stands.

Warnings. The ``isinstance(treespec, LeafSpec)`` deprecation warning that torch raises inside
Lightning is filtered, by its message, in the ``ldt`` process only: importing the package
changes no warning filter.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import json
import os
import re
import shutil
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from lightning_dnn_tricks.recipes import list_recipes, recipe_description, resolve_recipe
from lightning_dnn_tricks.registry import TrickSpec, list_tricks
from lightning_dnn_tricks.validation import TrickConfigurationError

_CONFIG_FLAGS = ("-c", "--config")
_OPTIMIZER_SUPPORT = "lightning_dnn_tricks.callbacks.OptimizerSupport"
_PACKAGE_DIR = Path(__file__).resolve().parent

#: LightningCLI's subcommands; ``ldt`` adds ``list``, ``recipes`` and ``demo``.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: The published documentation; a trick's page is ``DOCS_URL + docs_page`` without ``.md``.
DOCS_URL = "https://lightning-dnn-tricks.readthedocs.io/"
#: The flag and the environment variable that show the full traceback of a configuration error.
TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "LDT_TRACEBACK"
#: The deprecation warning torch raises inside Lightning's pytree helpers (filtered by ``ldt``).
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
#: The exit status of a usage or configuration error (argparse's).
USAGE_ERROR = 2
_LIST_WIDTH = 80


class UnknownRecipeError(ValueError):
    """A ``-c``/``--config`` value that is neither an existing file nor a shipped recipe."""

    def __init__(self, value: str) -> None:
        matches = close_recipe_names(value)
        names = " or ".join([", ".join(matches[:-1]), matches[-1]] if matches[1:] else matches)
        hint = f"; did you mean {names}?" if matches else ""
        super().__init__(f"no recipe or file {value!r}{hint} (`ldt recipes` lists the recipes)")
        self.value = value
        self.matches = matches


def close_recipe_names(value: str) -> list[str]:
    """Up to three shipped recipe names close to ``value`` (a name or a path): the names that
    contain it, then ``difflib``'s closest (``sgdg2`` finds ``sgdg2_digits``, ``norm_los_digits``
    finds ``norm_loss_digits``)."""
    names = list(list_recipes())
    stem = Path(value).stem.lower()
    containing = [name for name in names if stem and stem in name]
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.7) or difflib.get_close_matches(
        stem, names, n=1, cutoff=0.5
    )
    return list(dict.fromkeys([*containing, *close]))[:3]


def _width() -> int:
    """The width to wrap at: the terminal's (``COLUMNS`` first), 80 when there is none."""
    return max(60, shutil.get_terminal_size((80, 24)).columns)


def class_path(spec: TrickSpec) -> str:
    """The shortest dotted path that imports the trick's class (what a recipe's ``class_path``
    names), e.g. ``lightning_dnn_tricks.callbacks.NormLoss``."""
    module_name, _, attribute = spec.import_path.partition(":")
    trick = spec.load()
    parts = module_name.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        module = sys.modules.get(prefix)  # spec.load() imported every prefix
        if module is not None and getattr(module, attribute, None) is trick:
            return f"{prefix}.{attribute}"
    return f"{module_name}.{attribute}"


def docs_url(spec: TrickSpec) -> str:
    """The trick's page in the published documentation."""
    return DOCS_URL + spec.docs_page.removesuffix(".md") + "/"


def print_tricks(file: TextIO | None = None) -> None:
    """Print every registered trick as plain text at most 80 columns wide: name, kind, summary,
    capabilities, class path and documentation page.

    Plain text (no table library, no colour) so that it reads the same in a terminal, a log
    and a pipe, and so that the core install needs no ``rich``; ``ldt list --json`` has every
    field.
    """
    out = file or sys.stdout
    width = min(_width(), _LIST_WIDTH)
    specs = list_tricks()
    print(
        f"lightning-dnn-tricks: {len(specs)} registered tricks (all fields: ldt list --json)",
        file=out,
    )
    for spec in specs:
        row = spec.capabilities.as_row()
        flag = " [our reconstruction]" if spec.reconstruction else ""
        capabilities = (
            f"precision: {row['precision']}; strategy: {row['strategy']}; "
            f"accumulation: {row['grad accumulation']}; closure: {row['closure']}"
        )
        print(f"\n{spec.name} ({spec.kind}){flag}", file=out)
        for text in (spec.summary, capabilities):
            wrapped = textwrap.fill(
                text, width, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
            )
            print(wrapped, file=out)
        print(f"  class: {class_path(spec)}", file=out)
        url = docs_url(spec)  # never wrapped: on a line of its own when it does not fit
        print(f"  docs: {url}" if len(url) + 8 <= width else f"  docs:\n    {url}", file=out)


def tricks_as_json() -> list[dict[str, Any]]:
    """Every registered trick as a JSON-ready dict (what ``ldt list --json`` prints)."""
    entries = []
    for spec in list_tricks():
        capabilities = dataclasses.asdict(spec.capabilities)
        capabilities = {
            key: sorted(value) if isinstance(value, frozenset) else value
            for key, value in capabilities.items()
        }
        capabilities = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in capabilities.items()
        }
        entries.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "class_path": class_path(spec),
                "import_path": spec.import_path,
                "summary": spec.summary,
                "paper": spec.paper,
                "reconstruction": spec.reconstruction,
                "docs_page": spec.docs_page,
                "docs_url": docs_url(spec),
                "capabilities": capabilities,
            }
        )
    return entries


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


def overview() -> str:
    """Every command and the shipped recipes, plain text within 80 columns: the epilog of
    ``ldt --help`` and what a bare ``ldt`` prints."""
    recipes = textwrap.fill(
        ", ".join(list_recipes()),
        _LIST_WIDTH,
        initial_indent="  ",
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join(
        [
            "commands:",
            "  fit, validate, test, predict",
            "                  LightningCLI: -c FILE or -c RECIPE, then overrides",
            "                  (ldt fit --help lists every option)",
            "  list [--json]   the registered tricks: capabilities, class path, docs page",
            "  recipes         the shipped recipes: description and path",
            "  demo            a timm model on digits with and without tricks",
            "                  (ldt demo --help)",
            "",
            "shipped recipes (ldt fit -c NAME):",
            recipes,
            "",
            f"A trick's configuration error prints one line; {TRACEBACK_FLAG} or",
            f"{TRACEBACK_ENV}=1 shows the traceback. Without a terminal (a log, a pipe),",
            "the progress bar prints one line per epoch.",
            f"Documentation: {DOCS_URL}",
        ]
    )


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


def _resolve(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _resolves_to(path: str, classes: tuple[type, ...]) -> bool:
    found = _resolve(path)
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


def _resolve_config(value: str) -> str:
    resolved = resolve_recipe(value)
    looks_like_a_name = re.fullmatch(r"[\w.~/\\-]+", value) is not None and value != "-"
    if resolved == value and looks_like_a_name and not Path(value).exists():
        raise UnknownRecipeError(value)
    return resolved


def _resolve_config_arguments(args: Sequence[str]) -> list[str]:
    """``args`` with every ``-c``/``--config`` value that names a shipped recipe replaced by its
    path; raises :class:`UnknownRecipeError` for a value that is neither a file nor a recipe (a
    YAML string given to ``--config`` is passed on)."""
    resolved = list(args)
    for index, arg in enumerate(resolved[:-1]):
        if arg in _CONFIG_FLAGS:
            resolved[index + 1] = _resolve_config(resolved[index + 1])
    for index, arg in enumerate(resolved):
        for flag in _CONFIG_FLAGS:
            if arg.startswith(flag + "="):
                resolved[index] = f"{flag}={_resolve_config(arg.split('=', 1)[1])}"
    return resolved


# ---------------------------------------------------------------- configuration errors
def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _frames(error: BaseException) -> Iterator[FrameType]:
    trace = error.__traceback__
    while trace is not None:
        yield trace.tb_frame
        trace = trace.tb_next


def _ours(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def _refused_by(error: BaseException) -> type | None:
    """The class of ours whose constructor raised ``error`` from our own code (a value refused
    by its checks), or ``None``."""
    frames = list(_frames(error))
    if not frames or not _ours(frames[-1].f_code.co_filename):
        return None
    for frame in reversed(frames):
        if frame.f_code.co_name == "__init__" and _ours(frame.f_code.co_filename):
            owner = frame.f_locals.get("self")
            if owner is not None:
                return type(owner)
    return None


def _config_key(config: Any, cls: type) -> str | None:
    """The dotted key of the first ``class_path`` in ``config`` that names ``cls``."""

    def walk(value: Any, prefix: str) -> str | None:
        if hasattr(value, "items"):
            for key, item in value.items():
                is_path = key == "class_path" or key.endswith(".class_path")
                if is_path and isinstance(item, str) and _resolve(item) is cls:
                    return (prefix + key.removesuffix("class_path")).rstrip(".")
                found = walk(item, f"{prefix}{key}.")
                if found is not None:
                    return found
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                found = walk(item, f"{prefix.rstrip('.')}[{index}].")
                if found is not None:
                    return found
        return None

    return None if config is None else walk(config, "")


def configuration_error(error: BaseException, config: Any = None) -> TrickConfigurationError | None:
    """A one-line :class:`TrickConfigurationError` for ``error`` when it is a trick's
    configuration error, else ``None``.

    That is a ``TrickConfigurationError`` anywhere in its chain of causes, or a ``ValueError``
    or ``TypeError`` that one of our constructors raised (``check_number`` and the like), e.g.
    under LightningCLI's "Does not validate against any of the Union subtypes". With the parsed
    ``config``, the message names the key to change.
    """
    for cause in reversed(_chain(error)):  # innermost first
        refused_by = _refused_by(cause)
        text = " ".join(str(cause).split())
        if refused_by is None:
            if not isinstance(cause, TrickConfigurationError):
                continue
            single_line = cause is error and "\n" not in str(cause)
            return cause if single_line else TrickConfigurationError(text)
        if not isinstance(cause, ValueError | TypeError):
            continue
        if not text.startswith(refused_by.__name__):
            text = f"{refused_by.__name__}: {text}"
        key = _config_key(config, refused_by)
        if key is not None:
            argument = re.match(r"`(\w+)`", str(cause))
            where = f"{key}.init_args.{argument.group(1)}" if argument else key
            text += f" Fix: change {where} in the config."
        return TrickConfigurationError(text)
    return None


def _traceback_requested() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def run_lightning_cli(args: Sequence[str] | None) -> Any:
    """Run LightningCLI with the library's models and datamodules available by class path, and
    with ``OptimizerSupport`` added when the configured optimizer needs it (see
    :func:`add_optimizer_support`); returns the ``LightningCLI`` instance.

    ``args=None`` lets LightningCLI read ``sys.argv`` itself (recipe names resolved there first).
    When standard output is not a terminal, the Trainer gets the progress bar of
    ``callbacks._log_progress.progress_bar_for_logs`` (one line per epoch).

    Raises:
        UnknownRecipeError: a ``-c`` value is neither a file nor a shipped recipe.
        TrickConfigurationError: a trick's configuration error (see
            :func:`configuration_error`), raised from the original error with a one-line
            message that names the key to change.
    """
    from jsonargparse import DefaultHelpFormatter
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer
    from lightning.pytorch.cli import LightningCLI

    import lightning_dnn_tricks.callbacks
    import lightning_dnn_tricks.data
    import lightning_dnn_tricks.models  # noqa: F401  (makes the short class names resolvable)
    from lightning_dnn_tricks.callbacks._log_progress import progress_bar_for_logs

    class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """jsonargparse's help, with the epilog's line breaks kept."""

    parsed: dict[str, Any] = {}

    class TricksCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            config = self.config.get(str(self.subcommand), self.config)
            parsed["config"] = config
            add_optimizer_support(config)

        def instantiate_trainer(self, **kwargs: Any) -> Trainer:
            trainer = self._get(self.config_init, "trainer", default=None)
            if trainer is not None:
                callbacks = trainer.get("callbacks")
                listed = (
                    []
                    if callbacks is None
                    else callbacks
                    if isinstance(callbacks, list)
                    else [callbacks]
                )
                keys = self._parser(self.subcommand).callback_keys
                extra = [self._get(self.config_init, key) for key in keys]
                enabled = kwargs.get("enable_progress_bar", trainer.get("enable_progress_bar"))
                bar = progress_bar_for_logs(enabled, [*listed, *extra])
                if bar is not None:
                    trainer["callbacks"] = [*listed, bar]
            return super().instantiate_trainer(**kwargs)

    resolved = None if args is None else _resolve_config_arguments(args)
    try:
        return TricksCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=resolved,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "description": (
                    "ldt: LightningCLI with the models, datamodules and tricks of "
                    "lightning-dnn-tricks, plus the commands list, recipes and demo."
                ),
                "epilog": overview(),
                "formatter_class": HelpFormatter,
            },
        )
    except (ValueError, TypeError) as error:
        converted = configuration_error(error, parsed.get("config"))
        if converted is None or converted is error:
            raise
        raise converted from error


def _fail(message: str) -> NoReturn:
    print(f"ldt: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ldt`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    show_traceback = TRACEBACK_FLAG in args or _traceback_requested()
    args = [arg for arg in args if arg != TRACEBACK_FLAG]
    if argv is None and show_traceback:
        os.environ[TRACEBACK_ENV] = "1"  # processes that Lightning re-launches see it too
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING)
    command = args[0] if args else ""
    try:
        if command in ("", "list", "recipes"):
            try:
                _print_listing(command, args[1:])
            except BrokenPipeError:  # `ldt list | head`: the reader stopped; no traceback
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        elif command == "demo":
            from lightning_dnn_tricks.demo import main as demo_main

            demo_main(args[1:])
        else:
            resolved = _resolve_config_arguments(args)
            if argv is None:
                sys.argv[1:] = resolved
            run_lightning_cli(None if argv is None else resolved)
    except UnknownRecipeError as error:
        _fail(str(error))
    except TrickConfigurationError as error:
        if show_traceback:
            raise
        text = " ".join(str(error).split())
        _fail(f"{text} (for the traceback: {TRACEBACK_FLAG} or {TRACEBACK_ENV}=1)")


def _print_listing(command: str, args: Sequence[str]) -> None:
    """A bare ``ldt``, ``ldt list [--json]`` or ``ldt recipes``."""
    if not command:
        commands = ",".join([*LIGHTNING_SUBCOMMANDS, "list", "recipes", "demo"])
        print(f"usage: ldt {{{commands}}} ...\n\n{overview()}")
        return
    parser = argparse.ArgumentParser(prog=f"ldt {command}")
    if command == "list":
        parser.add_argument("--json", action="store_true", help="print the tricks as JSON")
    options = parser.parse_args(list(args))
    if getattr(options, "json", False):
        print(json.dumps(tricks_as_json(), indent=2))
    else:
        (print_tricks if command == "list" else print_recipes)()


if __name__ == "__main__":
    main()
