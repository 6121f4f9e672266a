"""SGD-G2 and SRK2 maths against hand-computed cases and plain formulas."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from optim_cases import complex_least_squares
from torch import nn

from lightning_dnn_tricks.optim import SGDG2, SRK2, preserve_buffers
from lightning_dnn_tricks.optim.sgdg2 import adapted_step
from lightning_dnn_tricks.validation import TrickWarning


def _closure(opt: torch.optim.Optimizer, loss_fn):  # type: ignore[no-untyped-def]
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("h0", [0.01, 0.9])
def test_step_size_approaches_two_over_curvature_from_below(h0: float) -> None:
    lam = 4.0  # f = lam/2 ||x||^2: h_opt = 2/lam = 0.5 whatever h is
    x = nn.Parameter(torch.ones(5, dtype=torch.float64))
    opt = SGDG2([x], lr=h0, h_max=5.0)
    steps = []
    for _ in range(80):
        opt.step(_closure(opt, lambda: 0.5 * lam * (x**2).sum()))
        steps.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[0]["last_h_opt"] == pytest.approx(2 / lam, rel=1e-9)
    assert all(h < 2 / lam for h in steps)  # from below (h0 > 2/lam: fast decrease first)
    assert all(b >= a for a, b in itertools.pairwise(steps[1:]))  # then increasing
    assert steps[-1] == pytest.approx(2 / lam, rel=1e-3)


def test_two_steps_match_the_hand_computation() -> None:
    # f(x) = x^4 / 4, g = x^3, from x = 1 with h = 0.1, beta = 0.9.
    # step 1: g = 1, Y = 0.9, g~ = 0.729, D = 0.271, h_opt = 2 * 0.1 * 0.271 / 0.271^2
    #         = 0.2 / 0.271 = 0.738007..., >= h: h1 = 0.09 + 0.0738007... = 0.1638007...
    #         x1 = 1 - h1
    h_opt1 = 0.2 / 0.271
    h1 = 0.9 * 0.1 + 0.1 * h_opt1
    x1 = 1.0 - h1
    # step 2: g = x1^3, Y = x1 - h1 g, g~ = Y^3, D = g - g~, h_opt = 2 h1 D g / D^2 = 2 h1 g / D
    g2 = x1**3
    d2 = g2 - (x1 - h1 * g2) ** 3
    h_opt2 = 2 * h1 * g2 / d2
    h2 = 0.9 * h1 + 0.1 * h_opt2 if h_opt2 >= h1 else 0.1 * h_opt2
    x2 = x1 - h2 * g2
    x = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = SGDG2([x], lr=0.1, beta=0.9, h_max=10.0)
    closure = _closure(opt, lambda: (x**4).sum() / 4)
    opt.step(closure)
    assert opt.param_groups[0]["lr"] == pytest.approx(h1, rel=1e-12)
    assert x.item() == pytest.approx(x1, rel=1e-12)
    opt.step(closure)
    assert opt.param_groups[0]["last_h_opt"] == pytest.approx(h_opt2, rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(h2, rel=1e-12)
    assert x.item() == pytest.approx(x2, rel=1e-12)


def test_adapted_step_rules() -> None:
    assert adapted_step(1.0, dot=1.0, d_norm_sq=1.0, beta=0.9, tiny=1e-12) == (1.1, 2.0)
    assert adapted_step(1.0, dot=1.0, d_norm_sq=4.0, beta=0.9, tiny=1e-12)[0] == pytest.approx(0.05)
    assert adapted_step(1.0, dot=-1.0, d_norm_sq=1.0, beta=0.9, tiny=1e-12) == (1.0, 1.0)
    assert adapted_step(1.0, dot=0.0, d_norm_sq=0.0, beta=0.9, tiny=1e-12) == (1.0, 1.0)


def test_probe_sees_y_and_parameters_end_exactly_at_x_minus_h_new_g() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    opt = SGDG2(model.parameters(), lr=0.05)
    start = [p.detach().clone() for p in model.parameters()]
    seen: list[list[torch.Tensor]] = []

    def loss_fn() -> torch.Tensor:
        seen.append([p.detach().clone() for p in model.parameters()])
        return nn.functional.mse_loss(model(x), y)

    opt.step(_closure(opt, loss_fn))
    grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    h_new = opt.param_groups[0]["lr"]
    assert len(seen) == 2
    for x0, first, probe, g, p in zip(
        start, seen[0], seen[1], grads, model.parameters(), strict=True
    ):
        assert torch.equal(first, x0)
        assert torch.equal(probe, x0.clone().add_(g, alpha=-0.05))  # Y = X - h g
        assert torch.equal(p.detach(), x0.clone().add_(g, alpha=-h_new))  # from X, not from Y


def test_srk2_is_the_heun_step() -> None:
    x = nn.Parameter(torch.tensor([2.0, -1.0], dtype=torch.float64))
    opt = SRK2([x], lr=0.1)
    opt.step(_closure(opt, lambda: (x**2).sum()))  # g = 2x, g~ = 2(x - 0.2x) = 1.6x
    assert torch.allclose(
        x.detach(), torch.tensor([2.0, -1.0], dtype=torch.float64) * (1 - 0.05 * 3.6)
    )
    assert opt.param_groups[0]["lr"] == 0.1


def test_probe_replays_the_rng_and_leaves_it_after_one_evaluation() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    opt = SGDG2(model.parameters(), lr=0.01)
    masks: list[torch.Tensor] = []

    def loss_fn() -> torch.Tensor:
        out = model(torch.ones(6, 4))
        masks.append(out == 0)
        return out.sum()

    torch.manual_seed(3)
    opt.step(_closure(opt, loss_fn))
    after_step = torch.rand(3)
    torch.manual_seed(3)
    model(torch.ones(6, 4))
    after_one_evaluation = torch.rand(3)
    assert torch.equal(masks[0], masks[1])
    assert torch.equal(after_step, after_one_evaluation)


def test_probe_hooks_keep_batchnorm_statistics_from_moving_twice() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = SGDG2(model.parameters(), lr=0.01)
    handle = opt.register_probe_hook(lambda: preserve_buffers(model))
    data = torch.randn(8, 3)
    reference = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    reference.load_state_dict(model.state_dict())
    opt.step(_closure(opt, lambda: model(data).pow(2).sum()))
    reference(data)  # one forward at X: the statistics the step must leave
    assert int(model[1].num_batches_tracked) == 1
    assert torch.equal(model[1].running_mean, reference[1].running_mean)
    handle.remove()
    opt.step(_closure(opt, lambda: model(data).pow(2).sum()))
    assert int(model[1].num_batches_tracked) == 3


def test_zero_gradient_keeps_h_and_stays_finite() -> None:
    x = nn.Parameter(torch.zeros(3))
    opt = SGDG2([x], lr=0.1)
    opt.step(_closure(opt, lambda: (x**2).sum()))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1) and torch.isfinite(x).all()


def test_step_without_closure_explains_why() -> None:
    opt = SGDG2([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=r"closure.*16-mixed"):
        opt.step()


def _quadratic_run(
    dtype: torch.dtype, scale: float, steps: int
) -> tuple[list[float], torch.Tensor]:
    """SGD-G2 on ``f = scale/2 * sum(c_i x_i^2)``: gradients ~ scale, curvature ~ scale."""
    curvatures = torch.linspace(1.0, 2.0, 10, dtype=torch.float64).to(dtype)
    x = nn.Parameter(torch.linspace(-1.0, 1.0, 10, dtype=torch.float64).to(dtype) + 2.0)
    h0 = 0.1 / scale
    opt = SGDG2([x], lr=h0, h_min=1e-6 * h0, h_max=10 * h0)
    lrs = []
    for _ in range(steps):
        opt.step(_closure(opt, lambda: 0.5 * scale * (curvatures * x**2).sum()))
        lrs.append(opt.param_groups[0]["lr"])
    return lrs, x.detach()


def test_inner_products_of_float32_gradients_near_1e20_do_not_overflow() -> None:
    """<D, g> and ||D||^2 are ~1e40, past float32's 3.4e38: the float64 run is the reference."""
    found, x32 = _quadratic_run(torch.float32, 1e20, steps=5)
    expected, x64 = _quadratic_run(torch.float64, 1e20, steps=5)
    assert all(math.isfinite(h) for h in found)
    assert found == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(x32.double(), x64, rtol=1e-4, atol=1e-6)


def test_a_non_finite_step_size_keeps_the_previous_one() -> None:
    """A probe gradient of -inf makes <D, g> and ||D||^2 infinite in float64 too: inf/inf."""
    x = nn.Parameter(torch.ones(3))
    opt = SGDG2([x], lr=0.1)
    calls = 0

    def closure() -> torch.Tensor:
        nonlocal calls
        calls += 1
        x.grad = torch.tensor([1.0, 1.0, -math.inf if calls == 2 else 1.0])
        return torch.zeros(())

    opt.step(closure)
    assert opt.param_groups[0]["lr"] == 0.1 and math.isfinite(opt.param_groups[0]["last_h_opt"])
    assert torch.equal(x.detach(), torch.full((3,), 0.9))
    opt.step(_closure(opt, lambda: (x**2).sum()))  # and it adapts again afterwards
    assert math.isfinite(opt.param_groups[0]["lr"]) and opt.param_groups[0]["lr"] != 0.1


def test_complex_parameters_adapt_as_their_real_view() -> None:
    """Supported: inner products are real (Re <D, g>, with conjugation), so the run equals the
    same run on ``torch.view_as_real`` of the parameter."""
    (z, loss_z), (r, loss_r) = complex_least_squares(rows=6)
    opt_z, opt_r = SGDG2([z], lr=0.01, weight_decay=0.01), SGDG2([r], lr=0.01, weight_decay=0.01)
    for _ in range(5):
        opt_z.step(_closure(opt_z, loss_z))
        opt_r.step(_closure(opt_r, loss_r))
        assert opt_z.param_groups[0]["lr"] == pytest.approx(opt_r.param_groups[0]["lr"], rel=1e-12)
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-12, atol=1e-12)
    assert opt_z.param_groups[0]["lr"] != 0.01


def test_sparse_gradients_are_refused_before_any_parameter_moves() -> None:
    dense, embedding = nn.Linear(3, 2), nn.Embedding(5, 3, sparse=True)
    opt = SGDG2([{"params": dense.parameters()}, {"params": embedding.parameters()}], lr=0.01)
    before = [p.detach().clone() for p in dense.parameters()]
    closure = _closure(opt, lambda: dense(embedding(torch.tensor([1, 2]))).sum())
    with pytest.raises(ValueError, match=r"SGDG2.*sparse.*param group 1.*\(5, 3\).*sparse=False"):
        opt.step(closure)
    assert all(torch.equal(a, p) for a, p in zip(before, dense.parameters(), strict=True))


def test_an_lr_written_from_outside_warns_once() -> None:
    """OneCycleLR writes the lr before every step: SGD-G2's adaptation is overwritten."""
    x = nn.Parameter(torch.ones(3))
    opt = SGDG2([x], lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=10, cycle_momentum=False
    )
    with pytest.warns(TrickWarning, match=r"SGDG2.*lr.*param group 0.*outside") as record:
        for _ in range(4):
            opt.step(_closure(opt, lambda: (x**2).sum()))
            scheduler.step()
    assert sum(issubclass(w.category, TrickWarning) for w in record) == 1


def test_a_scheduler_on_srk2_is_its_fixed_lr() -> None:
    x = nn.Parameter(torch.ones(3))
    opt = SRK2([x], lr=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=10, cycle_momentum=False
    )
    for _ in range(3):  # no TrickWarning (the suite turns it into an error)
        opt.step(_closure(opt, lambda: (x**2).sum()))
        scheduler.step()
    assert opt.param_groups[0]["lr"] == scheduler.get_last_lr()[0]
