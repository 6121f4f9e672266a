"""The maths of adaptive importance sampling, against autograd and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_dnn_tricks.data import AdaptiveImportanceSampler, ImportanceCollate, IndexedDataset
from lightning_dnn_tricks.functional import (
    effective_sample_size,
    ess_fraction,
    importance_probabilities,
    importance_weighted_mean,
    importance_weights,
    logit_grad_norm,
    per_example_grad_norms,
)
from lightning_dnn_tricks.functional.importance_sampling import (
    RECORD_APPLIED,
    RECORD_LOGIT_GRAD,
    RECORD_LOSS,
)


def test_probabilities_mix_scores_with_uniform() -> None:
    scores = torch.tensor([4.0, 1.0, 0.0, 3.0])
    p = importance_probabilities(scores, theta=0.2)
    expected = 0.8 * scores.double() / 8.0 + 0.2 / 4
    torch.testing.assert_close(p, expected)
    assert p.dtype == torch.float64 and math.isclose(p.sum().item(), 1.0)
    # every weight is at most 1 / theta
    assert importance_weights(p).max().item() <= 1 / 0.2 + 1e-12
    assert torch.equal(importance_probabilities(scores, theta=1.0), torch.full((4,), 0.25).double())


def test_probabilities_are_safe_for_zero_nan_inf_and_negative_scores() -> None:
    uniform = torch.full((3,), 1 / 3).double()
    torch.testing.assert_close(importance_probabilities(torch.zeros(3)), uniform)
    torch.testing.assert_close(importance_probabilities(torch.full((3,), float("nan"))), uniform)
    p = importance_probabilities(torch.tensor([1.0, float("nan"), float("inf"), -2.0]), theta=0.0)
    # non-finite scores count as the largest finite one, negative ones as 0
    torch.testing.assert_close(p, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]).double())


@pytest.mark.parametrize("theta", [-0.1, 1.5, float("nan"), "big", True])
def test_bad_theta_raises_naming_it(theta: object) -> None:
    with pytest.raises(ValueError, match="`theta`"):
        importance_probabilities(torch.ones(3), theta=theta)  # type: ignore[arg-type]


def test_bad_scores_shape_raises() -> None:
    with pytest.raises(ValueError, match="`scores`"):
        importance_probabilities(torch.ones(2, 2))
    with pytest.raises(ValueError, match="`scores`"):
        importance_probabilities(torch.ones(0))


def test_effective_sample_size() -> None:
    assert effective_sample_size(torch.ones(5)).item() == pytest.approx(5.0)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert effective_sample_size(torch.zeros(0)).item() == 0.0
    p = torch.tensor([0.5, 0.25, 0.25]).double()
    # 1 / E_p[w^2] with w = 1/(n p)
    expected = 1.0 / sum(pi * (1 / (3 * pi)) ** 2 for pi in p.tolist())
    assert ess_fraction(p).item() == pytest.approx(expected)
    assert ess_fraction(torch.full((7,), 1 / 7).double()).item() == pytest.approx(1.0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_logit_grad_equals_the_autograd_gradient_norm_wrt_the_logits(smoothing: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator, requires_grad=True)
    targets = torch.randint(0, 5, (6,), generator=generator)
    losses = F.cross_entropy(logits, targets, reduction="none", label_smoothing=smoothing)
    (grad,) = torch.autograd.grad(losses.sum(), logits)  # row i = d loss_i / d z_i
    torch.testing.assert_close(logit_grad_norm(logits, targets, smoothing), grad.norm(dim=1))


def test_logit_grad_per_position_logits_match_the_mean_over_positions() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 6, generator=generator, requires_grad=True)
    targets = torch.randint(0, 6, (3, 4), generator=generator)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=1)
    (grad,) = torch.autograd.grad(losses.sum(), logits)
    torch.testing.assert_close(logit_grad_norm(logits, targets), grad.flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="`logits`"):
        logit_grad_norm(logits, targets[:, :2])


def test_per_example_grad_norms_match_a_loop_of_autograd() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    model.train()
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    norms = per_example_grad_norms(model, F.cross_entropy, x, y, chunk_size=3)
    assert model.training  # mode restored
    model.eval()
    expected = []
    for i in range(7):
        grads = torch.autograd.grad(
            F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), list(model.parameters())
        )
        expected.append(torch.sqrt(sum(g.square().sum() for g in grads)))
    torch.testing.assert_close(norms, torch.stack(expected))


def _importance_batch(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    data = IndexedDataset(torch.utils.data.TensorDataset(torch.zeros(len(weights))))
    items = [data[(i, float(w))] for i, w in enumerate(weights)]
    return ImportanceCollate()(items)


def test_weighted_mean_applies_the_weights_and_records_the_scores() -> None:
    batch = _importance_batch(torch.tensor([0.5, 2.0]))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)
    targets = torch.tensor([0, 0])
    losses = F.cross_entropy(logits, targets, reduction="none")
    loss = importance_weighted_mean(losses, batch, logits=logits, targets=targets)
    torch.testing.assert_close(loss, (0.5 * losses[0] + 2.0 * losses[1]) / 2)
    record = batch["record"]
    assert record[:, RECORD_APPLIED].tolist() == [1.0, 1.0]
    torch.testing.assert_close(record[:, RECORD_LOSS], losses.detach())
    torch.testing.assert_close(record[:, RECORD_LOGIT_GRAD], logit_grad_norm(logits, targets))
    loss.backward()  # the record is not part of the graph
    with pytest.raises(ValueError, match="`losses`"):
        importance_weighted_mean(losses.detach()[:1], batch)
    with pytest.raises(ValueError, match="`logits`"):
        importance_weighted_mean(losses.detach(), batch, logits=logits)


def _gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example parameter gradients, one flattened row per example."""
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(
            F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), list(model.parameters())
        )
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows).double()


def test_importance_weighted_minibatch_gradients_are_unbiased() -> None:
    """Averages of many weighted minibatch gradients converge to the full-data gradient."""
    torch.manual_seed(0)
    n, batch_size = 48, 8
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(n, 4), torch.randint(0, 3, (n,))
    per_example = _gradients(model, x, y)
    full = per_example.mean(dim=0)
    p = importance_probabilities(per_example.norm(dim=1), theta=0.3)

    # One minibatch through the real path: the autograd gradient of the weighted mean loss.
    sampler = AdaptiveImportanceSampler(n, batch_size=batch_size, num_samples=batch_size, seed=1)
    sampler.set_probabilities(p)
    pairs = list(sampler)
    idx = torch.tensor([i for i, _ in pairs])
    w = torch.tensor([weight for _, weight in pairs])
    loss = importance_weighted_mean(F.cross_entropy(model(x[idx]), y[idx], reduction="none"), w)
    autograd = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
    linear = (w.double()[:, None] * per_example[idx]).mean(dim=0)
    torch.testing.assert_close(autograd.double(), linear, rtol=1e-5, atol=1e-7)

    # Many minibatches: the gradient of the weighted mean is linear in the per-example gradients.
    draws = [100, 400, 1600, 6400]
    sampler = AdaptiveImportanceSampler(n, batch_size, num_samples=draws[-1] * batch_size, seed=2)
    sampler.set_probabilities(p)
    pairs = list(sampler)
    idx = torch.tensor([i for i, _ in pairs]).view(-1, batch_size)
    w = torch.tensor([weight for _, weight in pairs]).double().view(-1, batch_size)
    minibatch = (w[..., None] * per_example[idx]).mean(dim=1)  # (draws, parameters)
    errors = [((minibatch[:k].mean(0) - full).norm() / full.norm()).item() for k in draws]
    # Expected size of the error: sqrt(trace Cov / k) / ||g||.
    spread = minibatch.var(dim=0).sum().sqrt().item() / full.norm().item()
    for k, error in zip(draws, errors, strict=True):
        assert error < 3 * spread / math.sqrt(k), (k, error)
    slope = math.log(errors[-1] / errors[0]) / math.log(draws[-1] / draws[0])
    assert -0.8 < slope < -0.3, errors  # ~ 1/sqrt(draws)
    assert errors[-1] < 0.05


def test_empty_batch_gives_zero_loss_with_zero_gradient() -> None:
    """The weighted mean of an empty batch used to be NaN (and poison the parameters)."""
    layer = nn.Linear(2, 3)
    logits = layer(torch.zeros(0, 2))
    targets = torch.zeros(0, dtype=torch.long)
    losses = F.cross_entropy(logits, targets, reduction="none")
    batch = {"example": None, "weight": torch.zeros(0), "record": torch.zeros(0, 3)}
    loss = importance_weighted_mean(losses, batch, logits=logits, targets=targets)
    assert loss.item() == 0.0
    loss.backward()
    assert layer.weight.grad is not None and torch.count_nonzero(layer.weight.grad) == 0
    torch.testing.assert_close(
        importance_weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5])),
        torch.tensor(2.5),
    )


def test_logit_grad_norm_with_no_positions_is_zero() -> None:
    """Per-position logits with no positions used to give NaN (0 / 0)."""
    norms = logit_grad_norm(torch.randn(3, 0, 4), torch.zeros(3, 0, dtype=torch.long))
    assert torch.equal(norms, torch.zeros(3))
    assert logit_grad_norm(torch.randn(0, 4), torch.zeros(0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match="C >= 1"):
        logit_grad_norm(torch.randn(3, 0), torch.zeros(3, dtype=torch.long))


def test_ess_fraction_of_no_examples_is_one() -> None:
    """``ess_fraction`` of nothing used to be NaN; it is 1 (no loss against uniform)."""
    assert ess_fraction(torch.zeros(0)).item() == 1.0
    assert ess_fraction(torch.zeros(0)).dtype == torch.float64
    assert effective_sample_size(torch.zeros(0)).item() == 0.0


@pytest.mark.parametrize("theta", [10**400, float("inf")])
def test_huge_theta_raises_naming_it(theta: object) -> None:
    with pytest.raises(ValueError, match="`theta`"):
        importance_probabilities(torch.ones(3), theta=theta)  # type: ignore[arg-type]


@pytest.mark.parametrize("smoothing", [-0.1, 1.5, float("nan"), True, 10**400, "0.1"])
def test_bad_label_smoothing_raises_naming_it(smoothing: object) -> None:
    with pytest.raises(ValueError, match="`label_smoothing`"):
        logit_grad_norm(torch.randn(2, 3), torch.zeros(2).long(), smoothing)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`label_smoothing`"):
        importance_weighted_mean(
            torch.ones(2),
            torch.ones(2),
            label_smoothing=smoothing,  # type: ignore[arg-type]
        )


def test_wrong_types_are_refused_naming_the_argument() -> None:
    calls = {
        "scores": lambda: importance_probabilities([1.0, 2.0]),  # type: ignore[arg-type]
        "probabilities": lambda: importance_weights([0.5, 0.5]),  # type: ignore[arg-type]
        "indices": lambda: importance_weights(torch.ones(2) / 2, [0]),  # type: ignore[arg-type]
        "weights": lambda: effective_sample_size([1.0]),  # type: ignore[arg-type]
        "logits": lambda: logit_grad_norm([[0.0]], torch.zeros(1).long()),  # type: ignore[arg-type]
        "losses": lambda: importance_weighted_mean([1.0], torch.ones(1)),  # type: ignore[arg-type]
        "batch": lambda: importance_weighted_mean(torch.ones(1), [1.0]),  # type: ignore[arg-type]
        "model": lambda: per_example_grad_norms(
            "m",
            F.mse_loss,
            torch.ones(1, 2),
            torch.ones(1, 2),  # type: ignore[arg-type]
        ),
        "loss_fn": lambda: per_example_grad_norms(
            nn.Linear(2, 2),
            "mse",
            torch.ones(1, 2),
            torch.ones(1, 2),  # type: ignore[arg-type]
        ),
    }
    for argument, call in calls.items():
        with pytest.raises(TypeError, match=f"`{argument}`"):
            call()
    with pytest.raises(TypeError, match="`probabilities`"):
        ess_fraction([0.5, 0.5])  # type: ignore[arg-type]
    for chunk_size in (0, 1.5, True, 10**400):
        with pytest.raises(ValueError, match="`chunk_size`"):
            per_example_grad_norms(
                nn.Linear(2, 2),
                F.mse_loss,
                torch.ones(1, 2),
                torch.ones(1, 2),
                chunk_size=chunk_size,  # type: ignore[arg-type]
            )
