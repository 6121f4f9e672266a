"""The predictive coding network and SequenceModel's longer-than-trained evaluation."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import QUIET_TRAINER
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn_tricks.callbacks import NormGroup, WeightNormSupervision
from lightning_dnn_tricks.functional import contraction_check
from lightning_dnn_tricks.models import PredictiveCodingNetwork, SequenceModel


def _images(n: int = 16, size: int = 7) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, size, size, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_cycles_follow_the_update_rule() -> None:
    torch.manual_seed(0)
    model = PredictiveCodingNetwork(hidden_channels=(3, 4), strides=(1, 2), cycles=1)
    x = torch.randn(2, 1, 7, 7)  # odd size: the feedback convs must restore 7x7 from 4x4
    r1, r2 = model.initial_states(x)
    torch.testing.assert_close(r1, torch.relu(model.feedforward[0](x)))
    # One cycle by hand.
    p2 = model.feedback[1](r2, output_size=r1.shape[-2:])
    a = torch.relu(model.feedback_rates[0])
    r1_new = torch.relu(a * p2 + (1 - a) * r1)
    p1 = model.feedback[0](r1_new, output_size=x.shape[-2:])
    b1, b2 = (torch.relu(rate) for rate in model.feedforward_rates)
    r1_new = torch.relu(r1_new + b1 * model.feedforward[0](x - p1))
    r2_new = torch.relu(r2 + b2 * model.feedforward[1](r1_new - p2))
    out1, out2 = model.cycle(x, [r1, r2])
    torch.testing.assert_close(out1, r1_new)
    torch.testing.assert_close(out2, r2_new)
    torch.testing.assert_close(model(x, cycles=1), model.readout([r1_new, r2_new]))
    assert len(model.trajectory(x, 4)) == 5


def test_training_and_evaluation_cycles() -> None:
    model = PredictiveCodingNetwork(hidden_channels=(4,), strides=(1,), cycles=2, eval_cycles=7)
    calls: list[int] = []
    original = model.cycle

    def counting(x: torch.Tensor, states: Any) -> Any:
        calls.append(int(model.training))
        return original(x, states)

    model.cycle = counting  # type: ignore[method-assign]
    x = torch.randn(2, 1, 8, 8)
    model.train()
    model(x)
    model.eval()
    model(x)
    assert calls == [1, 1] + [0] * 7


def test_pcn_trains_with_wns_on_feedforward_and_feedback_groups() -> None:
    pl.seed_everything(0)
    model = PredictiveCodingNetwork(hidden_channels=(4, 8), strides=(1, 2), cycles=2)
    wns = WeightNormSupervision(
        groups=[
            NormGroup("feedforward", bound=0.5, include=r"^feedforward\."),
            NormGroup("feedback", bound=0.5, include=r"^feedback\.", mode="penalty"),
        ],
        iterations=3,
    )
    assert wns.select(model) == {
        "feedforward": ["feedforward.0.weight", "feedforward.1.weight"],
        "feedback": ["feedback.0.weight", "feedback.1.weight"],
    }
    trainer = pl.Trainer(max_steps=4, callbacks=[wns], **QUIET_TRAINER)
    trainer.fit(model, _images())
    # The metric is the norm measured before the projection (it may read above the bound); the
    # bound itself is checked on the exact operator norm below.
    assert float(trainer.callback_metrics["wns/feedforward/max_norm"]) > 0.4
    assert "wns/feedback/max_norm" in trainer.callback_metrics
    # The projected convs' operator norms on their 7x7 (and 7x7 -> 4x4) inputs are near the bound.
    x = torch.zeros(1, 1, 7, 7)
    conv = model.feedforward[0]
    dense = torch.autograd.functional.jacobian(lambda t: conv(t), x).reshape(-1, x.numel())
    assert float(torch.linalg.matrix_norm(dense, ord=2)) <= 0.5 * 1.05


@pytest.mark.parametrize(("rate", "contracts"), [(0.5, True), (0.0, False)])
def test_pcn_stability_check_with_the_cycle_as_step(rate: float, contracts: bool) -> None:
    # One 1x1 layer whose feedback is the adjoint of an orthogonal feedforward map: a cycle is
    # r <- relu(r + b Q (x - Q^T r)) = relu((1 - b) r + b Q x), contracting by 1 - b.
    model = PredictiveCodingNetwork(
        in_channels=4, hidden_channels=(4,), strides=(1,), kernel_size=1, feedforward_rate=rate
    )
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        model.feedforward[0].weight.copy_(q[:, :, None, None])
        model.feedback[0].weight.copy_(q[:, :, None, None])
    x = torch.randn(2, 4, 5, 5)
    start = model.initial_states(x)
    other = [s + torch.rand_like(s) for s in start]
    report = contraction_check(lambda s, inp: model.cycle(inp, s), [x] * 15, start, other)
    assert report.contracting is contracts
    assert report.rate <= (1 - rate) + 1e-6


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"hidden_channels": ()}, "hidden_channels"),
        ({"hidden_channels": (4, 0), "strides": (1, 1)}, "hidden_channels"),
        ({"strides": (1,)}, "strides"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"cycles": -1}, "cycles"),
        ({"eval_cycles": 1.5}, "eval_cycles"),
        ({"feedback_rate": 2.0}, "feedback_rate"),
        ({"feedforward_rate": -1.0}, "feedforward_rate"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_pcn_bad_arguments(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        PredictiveCodingNetwork(**kwargs)


@pytest.mark.parametrize("readout", ["last", "sequence"])
def test_sequence_model_evaluates_with_a_zero_input_prefix(readout: str) -> None:
    torch.manual_seed(0)
    model = SequenceModel("rnn", input_size=2, hidden_size=8, readout=readout, eval_prefix_steps=5)
    x = torch.randn(3, 4, 2)
    model.train()
    trained = model(x)
    model.eval()
    evaluated = model(x)
    assert evaluated.shape == trained.shape
    hidden, _ = model.rnn(torch.cat([torch.zeros(3, 5, 2), x], dim=1))
    expected = model.head(hidden[:, -1] if readout == "last" else hidden[:, 5:])
    torch.testing.assert_close(evaluated, expected)
    with pytest.raises(ValueError, match="`eval_prefix_steps`"):
        SequenceModel(eval_prefix_steps=-1)
