"""Spectral norms, penalty, projection and the stability check of Weight Norm Supervision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_dnn_tricks.functional import weight_norm_supervision as wns


def _dense_operator_norm(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Exact operator norm of a (transposed) conv from its dense Jacobian (built independently)."""
    x = torch.zeros(1, *input_shape, dtype=torch.float64)
    module = module.double()
    jacobian = torch.autograd.functional.jacobian(lambda t: module(t), x)
    matrix = jacobian.reshape(-1, x.numel())
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def _estimate(weight: torch.Tensor, op: wns.WeightOperator, iterations: int) -> float:
    return float(wns.power_iteration(weight, op, wns.initial_vector(op), iterations).sigma)


@pytest.mark.parametrize("shape", [(20, 20), (32, 12), (7, 40)])
def test_matrix_estimate_matches_matrix_norm_within_1_percent(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    w = torch.randn(shape)
    op = wns.weight_operator(w)
    exact = float(torch.linalg.matrix_norm(w, ord=2))
    assert _estimate(w, op, 200) == pytest.approx(exact, rel=1e-2)
    # Persistent vectors: one iteration per call converges over calls (as in training).
    v = wns.initial_vector(op)
    for _ in range(200):
        estimate = wns.power_iteration(w, op, v, iterations=1)
        v = estimate.v
    assert float(estimate.sigma) == pytest.approx(exact, rel=1e-2)
    assert float(estimate.sigma) <= exact * (1 + 1e-5)  # a lower bound


CONVS = {
    "conv2d_pad1": (lambda: nn.Conv2d(3, 4, 3, padding=1, bias=False), (3, 6, 6)),
    "conv2d_stride2": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False), (2, 7, 7)),
    "conv2d_groups_dil": (
        lambda: nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False),
        (4, 5, 5),
    ),
    "conv2d_circular": (
        lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False),
        (2, 5, 5),
    ),
    "conv1d_same": (lambda: nn.Conv1d(2, 3, 4, padding="same", bias=False), (2, 9)),
    "convT2d_stride2": (
        lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, bias=False),
        (4, 4, 4),
    ),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_estimate_matches_dense_operator_norm(name: str) -> None:
    build, input_shape = CONVS[name]
    torch.manual_seed(1)
    conv = build()
    op = wns.weight_operator(conv.weight, conv, "operator", input_shape)
    exact = _dense_operator_norm(conv, input_shape)
    estimate = _estimate(conv.weight.double(), op, 300)
    assert estimate == pytest.approx(exact, rel=1e-2)
    # The forward and adjoint are adjoint to each other: <A x, y> == <x, A^T y>.
    x = torch.randn(input_shape, dtype=torch.float64)
    y = op.forward(conv.weight.double(), x)
    y2 = torch.randn_like(y)
    lhs = (y * y2).sum()
    rhs = (x * op.adjoint(conv.weight.double(), y2)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("name", ["conv2d_pad1", "conv2d_stride2", "conv2d_groups_dil"])
def test_reshape_estimate_is_an_upper_bound(name: str) -> None:
    build, input_shape = CONVS[name]
    torch.manual_seed(2)
    conv = build()
    bound = _estimate(conv.weight, wns.weight_operator(conv.weight, conv, "reshape"), 300)
    assert bound >= _dense_operator_norm(conv, input_shape) * (1 - 1e-3)


def test_transposed_conv_with_output_size_uses_the_recorded_shape() -> None:
    conv = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, bias=False)
    x = torch.randn(1, 3, 4, 4)
    out = conv(x, output_size=[8, 8])
    op = wns.weight_operator(conv.weight, conv, "operator", (3, 4, 4), tuple(out.shape[1:]))
    assert op.forward(conv.weight, x[0]).shape == out.shape[1:]
    torch.testing.assert_close(op.forward(conv.weight, x[0]), out[0])


PENALTY_CASES = {
    "conv": (lambda: nn.Conv2d(2, 3, 3, padding=1, bias=False), (2, 5, 5)),
    "conv_circular": (
        lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular", bias=False),
        (2, 5, 5),
    ),
    "conv_transpose": (
        lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, bias=False),
        (3, 3, 3),
    ),
}


@pytest.mark.parametrize("kind", ["matrix", *PENALTY_CASES])
def test_penalty_gradient_matches_autograd(kind: str) -> None:
    torch.manual_seed(3)
    if kind == "matrix":
        module: nn.Module = nn.Linear(6, 5, bias=False)
        op = wns.weight_operator(module.weight)
    else:
        build, input_shape = PENALTY_CASES[kind]
        module = build()
        op = wns.weight_operator(module.weight, module, "operator", input_shape)
    weight = module.weight
    estimate = wns.power_iteration(weight, op, wns.initial_vector(op), 500)
    bound, strength = 0.5 * float(estimate.sigma), 0.7
    penalty = wns.add_spectral_penalty_grad_(weight, op, estimate, bound, strength)
    # Reference: autograd through the exact norm of the dense operator.
    leaf = weight.detach().clone().requires_grad_(True)
    if kind == "matrix":
        sigma = torch.linalg.matrix_norm(leaf, ord=2)
    else:
        x = torch.zeros(1, *input_shape)

        def apply(t: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(module, {"weight": leaf}, (t,))

        dense = torch.autograd.functional.jacobian(apply, x, create_graph=True)
        sigma = torch.linalg.matrix_norm(dense.reshape(-1, x.numel()), ord=2)
    reference = strength * torch.relu(sigma - bound) ** 2
    reference.backward()
    assert float(penalty) == pytest.approx(float(reference.detach()), rel=1e-3)
    assert weight.grad is not None and leaf.grad is not None
    torch.testing.assert_close(weight.grad, leaf.grad, rtol=1e-3, atol=1e-4)


def test_no_penalty_gradient_below_the_bound() -> None:
    w = nn.Parameter(0.1 * torch.eye(4))
    op = wns.weight_operator(w)
    estimate = wns.power_iteration(w, op, wns.initial_vector(op), 10)
    assert float(wns.add_spectral_penalty_grad_(w, op, estimate, 1.0, 1.0)) == 0.0
    assert w.grad is None
    assert float(wns.spectral_penalty(torch.tensor([0.5, 2.0]), 1.0)) == 1.0


def test_projection_leaves_the_norm_at_most_the_bound() -> None:
    torch.manual_seed(4)
    w = torch.randn(16, 16) / 4
    op = wns.weight_operator(w)
    v = wns.power_iteration(w, op, wns.initial_vector(op), 50).v  # warm start, as the callback
    for _ in range(100):  # "training steps": perturb, estimate (3 iterations), project
        w += 0.003 * torch.randn(16, 16)
        estimate = wns.power_iteration(w, op, v, iterations=3)
        v = estimate.v
        # The supervised norm (the estimate) is at most the bound after every step...
        assert wns.project_spectral_norm_(w, estimate.sigma, 0.9) <= 0.9
        # ...and the exact norm is within the estimate's error (1%): projection clusters the top
        # singular values at the bound, which slows power iteration down.
        assert float(torch.linalg.matrix_norm(w, ord=2)) <= 0.9 * 1.01


def test_zero_weight_is_finite() -> None:
    w = torch.zeros(3, 4)
    op = wns.weight_operator(w)
    v = wns.initial_vector(op)
    estimate = wns.power_iteration(w, op, v, 3)
    assert float(estimate.sigma) == 0.0
    torch.testing.assert_close(estimate.v, v)
    assert torch.isfinite(wns.spectral_norm_grad(w, op, estimate)).all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dim >= 2"):
        wns.weight_operator(torch.zeros(3))
    with pytest.raises(ValueError, match="`estimate`"):
        wns.weight_operator(torch.zeros(3, 3), estimate="exact")  # type: ignore[arg-type]
    conv = nn.Conv2d(1, 1, 3)
    with pytest.raises(ValueError, match="input_shape"):
        wns.weight_operator(conv.weight, conv, "operator")
    with pytest.raises(ValueError, match="`iterations`"):
        op = wns.weight_operator(torch.eye(2))
        wns.power_iteration(torch.eye(2), op, wns.initial_vector(op), 0)


def _rnn_with_recurrent_norm(norm: float, hidden: int = 32) -> nn.RNN:
    torch.manual_seed(5)
    rnn = nn.RNN(3, hidden, batch_first=True)
    q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(norm * q)
    return rnn


def test_tanh_rnn_below_one_contracts_and_large_norm_does_not() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = list(torch.randn(100, 4, 3, generator=generator).unbind(0))
    h_a = torch.randn(1, 4, 32, generator=generator)
    h_b = torch.randn(1, 4, 32, generator=generator)
    small = _rnn_with_recurrent_norm(0.9)
    assert wns.tanh_rnn_norms(small)[0] == pytest.approx(0.9, rel=1e-4)
    report = wns.contraction_check(wns.rnn_step(small), inputs, h_a, h_b)
    assert report.contracting and report.rate <= 0.9 + 1e-6
    large = _rnn_with_recurrent_norm(3.0)
    report = wns.contraction_check(wns.rnn_step(large), inputs, h_a, h_b)
    assert not report.contracting and report.ratio > 0.1


def test_contraction_check_handles_tuple_states_and_bad_input() -> None:
    lstm = nn.LSTM(2, 8)
    state = (torch.zeros(1, 2, 8), torch.ones(1, 2, 8))
    other = (torch.ones(1, 2, 8), torch.zeros(1, 2, 8))
    report = wns.contraction_check(wns.rnn_step(lstm), [torch.randn(2, 2)] * 5, state, other)
    assert report.distances.shape == (6,)
    with pytest.raises(ValueError, match="differ"):
        wns.contraction_check(wns.rnn_step(lstm), [torch.randn(2, 2)], state, state)
    with pytest.raises(ValueError, match="`inputs`"):
        wns.contraction_check(wns.rnn_step(lstm), [], state, other)
    with pytest.raises(ValueError, match="tanh"):
        wns.tanh_rnn_norms(nn.GRU(2, 3))  # type: ignore[arg-type]


# ---------------------------------------------------------------- the near-bound check
def _matrix_with_spectrum(singular: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = singular.numel()
    left, _ = torch.linalg.qr(torch.randn(rows, n, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return (left * singular) @ right.T


def test_check_converges_where_power_iteration_creeps() -> None:
    """Close top singular values and a vector almost orthogonal to the top one: 30 power
    iterations are still percents low (a projection with them would leave the weight over its
    bound), the check is within its tolerance."""
    singular = torch.cat([torch.tensor([1.0, 0.97, 0.96]), torch.linspace(0.9, 0.1, 37)])
    w = _matrix_with_spectrum(singular, 80, seed=0)
    _, _, vh = torch.linalg.svd(w)
    stale = vh[1] + 0.01 * vh[0] + 0.05 * vh[5]  # converged onto the second: the new top is new
    stale = stale / stale.norm()
    op = wns.weight_operator(w)
    power = float(wns.power_iteration(w, op, stale, 30).sigma)
    assert power < 0.99  # the failure the check exists for
    result = wns.converge_spectral_norms([w], [op], [stale], tolerance=1e-2)
    assert result.converged == [True]
    assert 1.0 / 1.01 <= result.sigmas[0] <= 1.0 + 1e-5  # within tolerance, and a lower bound
    assert result.iterations[0] < 60
    v = result.estimates[0].v
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(v @ vh[0])) > 0.9  # the persisted vector is the top singular vector


def test_projection_after_a_large_update_holds_the_bound() -> None:
    """A large low-rank update after the vector converged (a stale vector): one power iteration
    projects the weight to well over its bound, the check to within ``bound * (1 + tol)``."""
    torch.manual_seed(1)
    bound, tolerance = 0.95, 1e-2
    w = torch.randn(64, 32) / 8
    op = wns.weight_operator(w)
    v = wns.power_iteration(w, op, wns.initial_vector(op), 200).v
    # The update acts on directions orthogonal to v: the old vector barely sees it.
    q, _ = torch.linalg.qr(torch.cat([v[:, None], torch.randn(32, 2)], dim=1))
    update = 3.0 * torch.randn(64, 2) @ q[:, 1:].T / 8
    naive, checked = w + update, (w + update).clone()
    cheap = wns.power_iteration(naive, op, v, 1)
    wns.project_spectral_norm_(naive, cheap.sigma, bound)
    assert float(torch.linalg.matrix_norm(naive, 2)) > bound * (1 + tolerance)  # stale: too high
    cheap = wns.power_iteration(checked, op, v, 1)
    result = wns.converge_spectral_norms([checked], [op], [cheap.v], tolerance=tolerance)
    wns.project_spectral_norm_(checked, max(result.sigmas[0], float(cheap.sigma)), bound)
    assert float(torch.linalg.matrix_norm(checked, 2)) <= bound * (1 + tolerance)


@pytest.mark.parametrize("name", ["conv2d_pad1", "conv2d_stride2", "convT2d_stride2"])
def test_check_on_conv_operators_matches_the_dense_norm(name: str) -> None:
    make, shape = CONVS[name]
    torch.manual_seed(2)
    conv = make()
    op = wns.weight_operator(conv.weight, conv, "operator", shape)
    result = wns.converge_spectral_norms([conv.weight], [op], [wns.initial_vector(op)], 1e-3)
    exact = _dense_operator_norm(conv, shape)
    assert result.sigmas[0] == pytest.approx(exact, rel=1e-3)
    assert result.sigmas[0] <= exact * (1 + 1e-5)


def test_check_runs_several_weights_at_once() -> None:
    """Weights of different shapes in one call: each gets its own estimate and count; a weight
    that converges early stops iterating while the others go on."""
    torch.manual_seed(3)
    easy = torch.diag(torch.tensor([2.0, 0.1, 0.1]))
    hard = _matrix_with_spectrum(torch.linspace(1.0, 0.5, 50), 60, seed=3)
    zero = torch.zeros(4, 5)
    weights = [easy, hard, zero]
    ops = [wns.weight_operator(w) for w in weights]
    result = wns.converge_spectral_norms(weights, ops, [wns.initial_vector(op) for op in ops])
    for w, sigma in zip(weights, result.sigmas, strict=True):
        exact = float(torch.linalg.matrix_norm(w, 2))
        assert exact / 1.01 <= sigma <= exact * (1 + 1e-5) + 1e-7
    assert result.iterations[0] < result.iterations[1]
    assert all(torch.isfinite(e.v).all() and torch.isfinite(e.sigma) for e in result.estimates)


def test_check_restarts_past_the_krylov_dimension() -> None:
    """A tight tolerance on a slowly converging spectrum runs past ``KRYLOV_DIMENSION``: the
    restarted estimate is still a lower bound, within tolerance, with a unit vector."""
    singular = 1.0 - 0.002 * torch.arange(200, dtype=torch.float32)
    w = _matrix_with_spectrum(singular, 200, seed=4)
    op = wns.weight_operator(w)
    result = wns.converge_spectral_norms([w], [op], [wns.initial_vector(op)], 1e-3, 200)
    assert result.iterations[0] > wns.KRYLOV_DIMENSION
    assert 1.0 / 1.001 <= result.sigmas[0] <= 1.0 + 1e-5
    assert float(result.estimates[0].v.norm()) == pytest.approx(1.0, abs=1e-5)


def test_check_bad_arguments() -> None:
    op = wns.weight_operator(torch.eye(2))
    v = wns.initial_vector(op)
    with pytest.raises(ValueError, match="one entry per weight"):
        wns.converge_spectral_norms([torch.eye(2)], [op, op], [v])
    with pytest.raises(ValueError, match="`tolerance`"):
        wns.converge_spectral_norms([torch.eye(2)], [op], [v], tolerance=0.0)
    with pytest.raises(ValueError, match="`max_iterations`"):
        wns.converge_spectral_norms([torch.eye(2)], [op], [v], max_iterations=1)
    assert wns.converge_spectral_norms([], [], []).sigmas == []
