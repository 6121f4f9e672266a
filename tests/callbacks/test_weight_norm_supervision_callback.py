"""The WeightNormSupervision callback inside a real Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from ldt_testing import QUIET_TRAINER, TinyConvNet, tiny_loader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn_tricks import TrickConfigurationError, TrickWarning
from lightning_dnn_tricks.callbacks import NormGroup, WeightNormSupervision
from lightning_dnn_tricks.models import SequenceModel


class GradRecorder(pl.Callback):
    """Records the gradients the optimizer sees (place it after the callbacks under test)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.grads = {
            n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None
        }


class NormRecorder(pl.Callback):
    """The exact ``||weight_hh_l0||_2`` after every optimizer step."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        weight = pl_module.rnn.weight_hh_l0.detach()
        self.norms.append(float(torch.linalg.matrix_norm(weight, ord=2)))


def _one_step(callbacks: list[pl.Callback]) -> GradRecorder:
    recorder = GradRecorder()
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=1, callbacks=[*callbacks, recorder], **QUIET_TRAINER)
    trainer.fit(TinyConvNet(), tiny_loader())
    return recorder


def test_penalty_adds_the_gradient_of_the_exact_penalty() -> None:
    strength, bound = 0.3, 0.2
    plain = _one_step([])
    group = NormGroup("all", bound=bound, mode="penalty", strength=strength)
    penalised = _one_step([WeightNormSupervision(groups=[group], iterations=100)])
    pl.seed_everything(0)
    model = TinyConvNet()
    conv, head = model.features[0], model.head
    x = torch.zeros(1, 1, 8, 8)
    # The conv's operator as a dense matrix (its input Jacobian), differentiable in the weight.
    operator = torch.autograd.functional.jacobian(
        lambda t: nn.functional.conv2d(t, conv.weight), x, create_graph=True
    ).reshape(-1, x.numel())
    sigmas = [torch.linalg.matrix_norm(operator, ord=2), torch.linalg.matrix_norm(head.weight, 2)]
    penalty = sum(strength * torch.relu(s - bound) ** 2 for s in sigmas)
    penalty.backward()  # type: ignore[union-attr]
    for name, param in (("features.0.weight", conv.weight), ("head.weight", head.weight)):
        added = penalised.grads[name] - plain.grads[name]
        torch.testing.assert_close(added, param.grad, rtol=1e-2, atol=1e-4)
    for name in ("features.0.bias", "features.1.weight", "head.bias"):
        torch.testing.assert_close(penalised.grads[name], plain.grads[name])


def _sequence_loader(n: int = 32, seed: int = 0) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, 2, generator=generator)
    return DataLoader(TensorDataset(x, torch.randn(n, 1, generator=generator)), batch_size=8)


def _rnn(norm: float = 3.0) -> SequenceModel:
    pl.seed_everything(0)
    model = SequenceModel(
        "rnn", input_size=2, hidden_size=12, optimizer=lambda p: torch.optim.SGD(p, lr=0.5)
    )
    with torch.no_grad():
        w = model.rnn.weight_hh_l0
        w.mul_(norm / torch.linalg.matrix_norm(w, ord=2))
    return model


def test_projection_bounds_the_recurrent_norm_after_every_step() -> None:
    norms = NormRecorder()
    # Default groups: weight_hh projected to 0.95, within the default tolerance (1%) under these
    # large SGD steps.
    wns = WeightNormSupervision(iterations=2)
    trainer = pl.Trainer(max_steps=8, callbacks=[wns, norms], **QUIET_TRAINER)
    trainer.fit(_rnn(3.0), _sequence_loader())
    assert len(norms.norms) == 8
    assert max(norms.norms) <= 0.95 * 1.01
    # The metric is the norm measured before the projection: these large steps push it past
    # the bound, and the metric shows it (it used to read min(estimate, bound)).
    assert float(trainer.callback_metrics["wns/recurrent/max_norm"]) > 0.95
    assert set(wns.state_dict()["vectors"]) == {"rnn.weight_hh_l0"}


def test_first_matching_group_wins_and_empty_groups_are_fine() -> None:
    model = _rnn()
    wns = WeightNormSupervision(
        groups=[
            NormGroup("recurrent", include="weight_hh"),
            NormGroup("heads", layer_types=(nn.Linear,)),
            NormGroup("convs", layer_types=(nn.Conv2d,)),
            NormGroup("rest", exclude="never"),
        ]
    )
    assert wns.select(model) == {
        "recurrent": ["rnn.weight_hh_l0"],
        "heads": ["head.weight"],
        "convs": [],
        "rest": ["rnn.weight_ih_l0"],
    }


def test_warns_when_nothing_matches() -> None:
    wns = WeightNormSupervision()  # no weight_hh in a conv net
    trainer = pl.Trainer(max_steps=1, callbacks=[wns], **QUIET_TRAINER)
    with pytest.warns(TrickWarning, match="matched no parameter"):
        trainer.fit(TinyConvNet(), tiny_loader())


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"groups": []}, "groups"),
        ({"groups": "recurrent"}, "groups"),
        ({"groups": [{"bound": 1.0}]}, "groups"),
        ({"groups": [{"name": "a", "typo": 1}]}, "groups"),
        ({"groups": [{"name": "a"}, {"name": "a"}]}, "groups"),
        ({"groups": [{"name": "a b"}]}, "name"),
        ({"groups": [{"name": "a", "bound": 0.0}]}, "bound"),
        ({"groups": [{"name": "a", "mode": "clip"}]}, "mode"),
        ({"groups": [{"name": "a", "strength": -1.0}]}, "strength"),
        ({"groups": [{"name": "a", "estimate": "exact"}]}, "estimate"),
        ({"groups": [{"name": "a", "include": "("}]}, "include"),
        ({"groups": [{"name": "a", "layer_types": [int]}]}, "layer_types"),
        ({"iterations": 0}, "iterations"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"tolerance": 0.9}, "tolerance"),
        ({"margin": -0.1}, "margin"),
        ({"margin": 1.5}, "margin"),
        ({"max_iterations": 1}, "max_iterations"),
        ({"max_iterations": -1}, "max_iterations"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        WeightNormSupervision(**kwargs)


class ManualRNN(SequenceModel):
    def __init__(self) -> None:
        super().__init__("rnn", input_size=2, hidden_size=12)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        loss, _, _ = self.compute_loss(batch)
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_manual_optimisation_projects_too() -> None:
    pl.seed_everything(0)
    model = ManualRNN()
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(5.0)
    wns = WeightNormSupervision(iterations=3)
    trainer = pl.Trainer(max_steps=3, callbacks=[wns], **QUIET_TRAINER)
    trainer.fit(model, _sequence_loader())
    # From ~5.5 to the bound: the estimate is <= 0.95, the exact norm within the estimate's error
    # (power iteration converges slowly when projection clusters the top singular values).
    assert float(torch.linalg.matrix_norm(model.rnn.weight_hh_l0.detach(), 2)) <= 0.95 * 1.05


def test_groups_round_trip_through_lightning_cli_yaml(tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    groups = [
        {"name": "recurrent", "include": "weight_hh", "bound": 0.9},
        {
            "name": "ff",
            "mode": "penalty",
            "estimate": "reshape",
            "layer_types": ["torch.nn.Linear"],
        },
    ]
    config = {
        "trainer": {
            "logger": False,
            "callbacks": [
                {
                    "class_path": "lightning_dnn_tricks.callbacks.WeightNormSupervision",
                    "init_args": {"groups": groups},
                }
            ],
        },
        "model": {"class_path": "lightning_dnn_tricks.models.SequenceModel"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(
        pl.LightningModule,
        subclass_mode_model=True,
        run=False,
        args=["--config", str(path)],
        save_config_callback=None,
    )
    (wns,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, WeightNormSupervision)]
    assert wns.groups == [
        NormGroup("recurrent", include="weight_hh", bound=0.9),
        NormGroup("ff", mode="penalty", estimate="reshape", layer_types=(nn.Linear,)),
    ]


def test_default_single_iteration_holds_the_bound_under_large_updates() -> None:
    """The near-bound check adds iterations: with iterations=1 and big SGD steps on an RNN, the
    exact spectral norm after every step stays within 1% of the bound (it did not before the
    check: the stale vector under-estimated the norm)."""
    norms = NormRecorder()
    wns = WeightNormSupervision()  # weight_hh projected to 0.95, one iteration per step
    trainer = pl.Trainer(max_steps=8, callbacks=[wns, norms], **QUIET_TRAINER)
    trainer.fit(_rnn(3.0), _sequence_loader())
    assert len(norms.norms) == 8
    assert max(norms.norms) <= 0.95 * 1.01
    assert max(wns.last_iterations.values()) > 1  # the check ran


# ---------------------------------------------------------------- telemetry
def test_logged_norm_shows_the_violation_on_a_csv_logger(tmp_path: Path) -> None:
    """The logged norm is the one measured before the projection: the first step starts from
    ``||W_hh|| = 3`` and the log says so (it used to read the bound), while the exact norm after
    the step is within the tolerance of the bound."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    norms = NormRecorder()
    settings = {**QUIET_TRAINER, "logger": CSVLogger(tmp_path, name="run")}
    trainer = pl.Trainer(max_steps=3, callbacks=[WeightNormSupervision(), norms], **settings)
    trainer.fit(_rnn(3.0), _sequence_loader())
    (path,) = tmp_path.glob("run/version_*/metrics.csv")
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("wns/recurrent/max_norm")]
    assert [int(row["step"]) for row in rows] == [0, 1, 2]
    assert float(rows[0]["wns/recurrent/max_norm"]) > 2.5  # measured: far over the bound
    assert float(rows[0]["wns/recurrent/projected"]) == 1.0
    assert max(norms.norms) <= 0.95 * 1.01  # and the bound held


def test_far_below_the_bound_runs_no_check_and_logs_no_projection() -> None:
    wns = WeightNormSupervision(groups=[NormGroup("recurrent", bound=100.0, include="weight_hh")])
    trainer = pl.Trainer(max_steps=3, callbacks=[wns], **QUIET_TRAINER)
    trainer.fit(_rnn(3.0), _sequence_loader())
    assert wns.last_iterations == {"rnn.weight_hh_l0": 1}  # the one power iteration, no check
    assert float(trainer.callback_metrics["wns/recurrent/projected"]) == 0.0
    assert 2.5 < float(trainer.callback_metrics["wns/recurrent/max_norm"]) < 100.0


# ---------------------------------------------------------------- the bound under a stale vector
class Kick(pl.Callback):
    """At step ``at``, adds a large update to ``W_hh`` orthogonal to WNS's persistent vector, in
    ``on_before_optimizer_step`` (so the projection after this step sees it with a stale vector).
    Records the exact norm after every step."""

    def __init__(self, wns: WeightNormSupervision, at: int, size: float) -> None:
        self.wns, self.at, self.size = wns, at, size
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if trainer.global_step != self.at:
            return
        w = pl_module.rnn.weight_hh_l0
        v = self.wns._vectors["rnn.weight_hh_l0"]
        generator = torch.Generator().manual_seed(0)
        right = torch.randn(w.shape[1], generator=generator)
        right -= (right @ v) * v  # orthogonal to the persistent vector: it is stale
        left = torch.randn(w.shape[0], generator=generator)
        with torch.no_grad():
            w += self.size * torch.outer(left / left.norm(), right / right.norm())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        weight = pl_module.rnn.weight_hh_l0.detach()
        self.norms.append(float(torch.linalg.matrix_norm(weight, ord=2)))


@pytest.mark.parametrize("check", [True, False])
def test_large_update_with_a_stale_vector_is_still_projected_within_tolerance(
    check: bool,
) -> None:
    """With the near-bound check the exact norm after the kicked step is within ``bound * (1 +
    tolerance)``; without it (``max_iterations=0``, the one-iteration estimate as before) the
    same step leaves the weight far over its bound: the test detects the failure."""
    wns = WeightNormSupervision(max_iterations=100 if check else 0)
    kick = Kick(wns, at=4, size=3.0)
    model = SequenceModel(
        "rnn", input_size=2, hidden_size=12, optimizer=lambda p: torch.optim.SGD(p, lr=0.01)
    )
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=6, callbacks=[wns, kick], **QUIET_TRAINER)
    trainer.fit(model, _sequence_loader())
    kicked = kick.norms[4]
    if check:
        assert kicked <= 0.95 * (1 + wns.tolerance)
        assert max(kick.norms) <= 0.95 * (1 + wns.tolerance)
    else:
        assert kicked > 0.95 * 1.5


# ---------------------------------------------------------------- company: WeightAlign
def _aligned_conv_net() -> TinyConvNet:
    from lightning_dnn_tricks.functional import apply_weight_align

    pl.seed_everything(0)
    model = TinyConvNet()
    apply_weight_align(model, exclude_classifier=True)  # features.0 aligned, head left plain
    return model


def test_a_group_matching_a_weight_aligned_conv_is_refused_at_fit_start() -> None:
    wns = WeightNormSupervision(groups=[NormGroup("convs", layer_types=(nn.Conv2d,))])
    trainer = pl.Trainer(max_steps=1, callbacks=[wns], **QUIET_TRAINER)
    with pytest.raises(TrickConfigurationError) as raised:
        trainer.fit(_aligned_conv_net(), tiny_loader())
    message = str(raised.value)
    for part in ("WeightNormSupervision", "WeightAlign", "'features.0.weight'", "exclude"):
        assert part in message, message
    assert "parametrizations.weight.original" in message


def test_a_group_that_leaves_the_aligned_conv_out_trains() -> None:
    groups = [NormGroup("head", bound=0.5, layer_types=(nn.Linear,), exclude=r"^features\.0\.")]
    wns = WeightNormSupervision(groups=groups)
    trainer = pl.Trainer(max_steps=2, callbacks=[wns], **QUIET_TRAINER)
    model = _aligned_conv_net()
    trainer.fit(model, tiny_loader())
    assert wns.select(model) == {"head": ["head.weight"]}
    assert float(torch.linalg.matrix_norm(model.head.weight.detach(), 2)) <= 0.5 * 1.01


def test_another_parametrisation_in_a_group_warns() -> None:
    from torch.nn.utils.parametrizations import orthogonal

    pl.seed_everything(0)
    model = TinyConvNet()
    orthogonal(model.head)
    wns = WeightNormSupervision(groups=[NormGroup("all", layer_types=(nn.Linear, nn.Conv2d))])
    trainer = pl.Trainer(max_steps=1, callbacks=[wns], **QUIET_TRAINER)
    with pytest.warns(TrickWarning, match="'head.weight', a weight behind a parametrisation"):
        trainer.fit(model, tiny_loader())
    assert wns.select(model) == {"all": ["features.0.weight"]}


# ---------------------------------------------------------------- two instances, one Trainer
def _two_instances(reverse: bool = False) -> list[WeightNormSupervision]:
    recurrent = WeightNormSupervision(groups=[NormGroup("recurrent", include="weight_hh")])
    head = WeightNormSupervision(groups=[NormGroup("head", bound=0.3, layer_types=(nn.Linear,))])
    return [head, recurrent] if reverse else [recurrent, head]


def test_two_instances_with_different_groups_resume_their_own_state(tmp_path: Path) -> None:
    """Different groups give different state keys; a run resumed from a checkpoint (with the
    instances listed the other way round) ends as the uninterrupted run: each instance got its
    own vectors back."""

    def fit(callbacks: list[WeightNormSupervision], epochs: int, ckpt: Path | None = None) -> Any:
        model = _rnn(3.0)
        trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, **QUIET_TRAINER)
        trainer.fit(model, _sequence_loader(n=16), ckpt_path=ckpt)
        return trainer, model

    first, second = _two_instances()
    assert first.state_key != second.state_key
    straight = _two_instances()
    _, expected = fit(straight, epochs=2)  # type: ignore[arg-type]

    trainer, _ = fit(_two_instances(), epochs=1)  # type: ignore[arg-type]
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["callbacks"]
    assert set(saved[first.state_key]["vectors"]) == {"rnn.weight_hh_l0"}
    assert set(saved[second.state_key]["vectors"]) == {"head.weight"}

    resumed = _two_instances(reverse=True)
    _, model = fit(resumed, epochs=2, ckpt=path)  # type: ignore[arg-type]
    for name, param in expected.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name], param, rtol=0, atol=0)
    by_key = {cb.state_key: cb for cb in resumed if isinstance(cb, WeightNormSupervision)}
    assert len(by_key) == 2
    for cb in (c for c in straight if isinstance(c, WeightNormSupervision)):
        mine = by_key[cb.state_key]._vectors
        assert set(mine) == set(cb._vectors)
        for key, vector in cb._vectors.items():
            torch.testing.assert_close(mine[key], vector, rtol=0, atol=0)
