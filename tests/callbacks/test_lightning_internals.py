"""Lightning's private internals: each one we use still exists; only ``_lightning.py`` uses them.

``lightning_dnn_tricks/callbacks/_lightning.py`` is the one module allowed to touch private
attributes of the Trainer, its loops, strategies and averaging callbacks; it lists them in
``PRIVATE_ACCESSES``. The first tests check every entry on real objects of the installed Lightning
(the supported range is bounded in ``pyproject.toml``); the last one scans the package's source for
private accesses anywhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import TinyConvNet, tiny_loader
from lightning.pytorch.callbacks import Callback, StochasticWeightAveraging

import lightning_dnn_tricks
from lightning_dnn_tricks.callbacks import _lightning
from lightning_dnn_tricks.callbacks._lightning import PRIVATE_ACCESSES, should_log

PACKAGE_DIR = Path(lightning_dnn_tricks.__file__).parent
ALLOWED = PACKAGE_DIR / "callbacks" / "_lightning.py"

#: Private attribute names of Lightning objects, beyond the first step of each PRIVATE_ACCESSES path
#: (internals that a trick has needed or may reach for: loop state, manual backward skipping).
KNOWN_PRIVATE_NAMES = frozenset(
    {path.split(".")[0] for _, path in PRIVATE_ACCESSES}
    | {"_active_loop", "_batches_that_stepped", "_skip_backward"}
)

TRAINER: dict[str, Any] = {
    "accelerator": "cpu",
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class _Capture(Callback):
    """Records the Trainer, its fit loop and loader slots at the first training batch."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}
        self.loader_slots: tuple[Any, Any] = (None, None)
        self.should_log: dict[int, bool] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self.objects:
            self.objects = {"Trainer": trainer, "_FitLoop": trainer.fit_loop}
            self.loader_slots = _lightning.training_loader_slots(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.should_log[batch_idx] = should_log(trainer)


def _fit(callbacks: list[Callback], **trainer_kwargs: Any) -> None:
    torch.manual_seed(0)
    settings = {**TRAINER, "max_steps": 1, **trainer_kwargs}
    pl.Trainer(callbacks=callbacks, **settings).fit(TinyConvNet(), tiny_loader())


def _resolve(owner: Any, path: str) -> Any:
    """``owner.a.b`` for ``path = "a.b"``, failing with the missing attribute's name."""
    value = owner
    for name in path.split("."):
        assert hasattr(value, name), f"{type(value).__name__} has no attribute {name!r} any more"
        value = getattr(value, name)
    return value


@pytest.fixture(scope="module")
def real_objects() -> dict[str, Any]:
    """One real object per owner named in PRIVATE_ACCESSES, after a 1-step fit."""
    capture = _Capture()
    averaging: list[Callback] = [StochasticWeightAveraging(swa_lrs=0.1)]
    if _lightning.WeightAveraging is not None:
        averaging.append(_lightning.WeightAveraging())
    _fit([capture, *averaging], max_epochs=1)  # SWA needs a finite max_epochs
    objects = dict(capture.objects)
    objects["loader_slots"] = capture.loader_slots
    # `_layer_sync` lives on ParallelStrategy (single-device strategies have none); building a
    # 1-process DDP Trainer sets it up without launching anything.
    objects["Strategy"] = pl.Trainer(
        **TRAINER, strategy="ddp", devices=1, sync_batchnorm=True
    ).strategy
    for callback in averaging:
        objects[type(callback).__name__] = callback
    return objects


@pytest.mark.parametrize(
    ("owner", "path"), PRIVATE_ACCESSES, ids=[".".join(a) for a in PRIVATE_ACCESSES]
)
def test_private_attribute_still_exists(
    real_objects: dict[str, Any], owner: str, path: str
) -> None:
    if owner == "WeightAveraging" and _lightning.WeightAveraging is None:
        pytest.skip("this Lightning has no WeightAveraging")
    assert owner in real_objects, f"no real {owner} object to check {path!r} on: add one here"
    _resolve(real_objects[owner], path)


def test_real_objects_are_the_expected_kinds(real_objects: dict[str, Any]) -> None:
    assert type(real_objects["_FitLoop"]).__name__ == "_FitLoop"
    assert isinstance(real_objects["Trainer"], pl.Trainer)
    # set during a training batch: the importance sampling callback swaps the loader through them
    combined_loader, data_fetcher = real_objects["loader_slots"]
    assert type(combined_loader).__name__ == "CombinedLoader"
    assert data_fetcher is not None and hasattr(data_fetcher, "setup")
    # the averaged copies exist after setup
    assert isinstance(real_objects["StochasticWeightAveraging"]._average_model, torch.nn.Module)
    if _lightning.WeightAveraging is not None:
        average = real_objects["WeightAveraging"]._average_model
        assert isinstance(average, torch.optim.swa_utils.AveragedModel)
    assert isinstance(
        _lightning.averaged_module(real_objects["StochasticWeightAveraging"]), TinyConvNet
    )


def test_layer_sync_follows_sync_batchnorm(real_objects: dict[str, Any]) -> None:
    assert _lightning.syncs_batchnorm(real_objects["Trainer"]) is False  # single device
    ddp = pl.Trainer(**TRAINER, strategy="ddp", devices=1)
    assert _lightning.syncs_batchnorm(ddp) is False
    synced = pl.Trainer(**TRAINER, strategy="ddp", devices=1, sync_batchnorm=True)
    assert _lightning.syncs_batchnorm(synced) is True


def test_should_log_follows_log_every_n_steps() -> None:
    capture = _Capture()
    _fit([capture], max_steps=4, log_every_n_steps=2)
    assert capture.should_log == {0: False, 1: True, 2: False, 3: True}


def test_should_log_every_step_and_never() -> None:
    every, never = _Capture(), _Capture()
    _fit([every], max_steps=3, log_every_n_steps=1)
    _fit([never], max_steps=3, log_every_n_steps=0)
    assert every.should_log == {0: True, 1: True, 2: True}
    assert never.should_log == {0: False, 1: False, 2: False}


# --- only _lightning.py touches Lightning's private attributes --------------------------------


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _is_trainer_like(node: ast.expr) -> bool:
    """``trainer``, ``x.trainer``, and ``<trainer>.fit_loop`` / ``<trainer>.strategy``."""
    if isinstance(node, ast.Name):
        return node.id == "trainer"
    if isinstance(node, ast.Attribute):
        if node.attr == "trainer":
            return True
        return node.attr in ("fit_loop", "strategy") and _is_trainer_like(node.value)
    return False


def _private_access(owner: ast.expr, name: str) -> bool:
    if not name.startswith("_") or _is_dunder(name):
        return False
    return name in KNOWN_PRIVATE_NAMES or _is_trainer_like(owner)


def private_accesses(path: Path) -> list[str]:
    """``file:line: expression`` for each private Lightning access in ``path``'s source.

    Attribute accesses (``trainer._x``) and ``getattr``/``setattr``/``hasattr``/``delattr`` with
    a constant name (``getattr(trainer.fit_loop, "_x", None)``).
    """
    source = path.read_text(encoding="utf-8")
    where = path.relative_to(PACKAGE_DIR.parent)
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        owner: ast.expr | None = None
        name = ""
        if isinstance(node, ast.Attribute):
            owner, name = node.value, node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            owner, name = node.args[0], node.args[1].value
        if owner is not None and _private_access(owner, name):
            assert isinstance(node, (ast.Attribute, ast.Call))
            found.append(f"{where}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_the_scanner_finds_private_accesses() -> None:
    found = private_accesses(ALLOWED)
    for name in ("_logger_connector", "_combined_loader", "_data_fetcher", "_layer_sync"):
        assert any(name in line for line in found), (name, found)


def test_only_the_lightning_module_touches_private_internals() -> None:
    offenders = [
        line
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if path != ALLOWED
        for line in private_accesses(path)
    ]
    assert not offenders, (
        "Lightning private attributes used outside callbacks/_lightning.py (move them there, "
        "list them in PRIVATE_ACCESSES):\n" + "\n".join(offenders)
    )
