"""FW-RNN against a literal step-by-step implementation of METHODS.md §1."""

from __future__ import annotations

import pytest
import torch
from optim_cases import complex_least_squares
from torch import nn

from lightning_dnn_tricks.optim import FrankWolfe

TINY = 1e-12


class TinyRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(2, 5, batch_first=True)
        self.head = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    return [
        (torch.randn(4, 6, 2, generator=generator), torch.randn(4, 1, generator=generator))
        for _ in range(n)
    ]


def _backward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    model.zero_grad()
    nn.functional.mse_loss(model(batch[0]), batch[1]).backward()


def _literal_run(
    model: nn.Module, batches: list, k: int, eps: float | list[float], trajectory: str
) -> None:
    """The rule as written, one tensor at a time, with a separate Adam.

    ``eps`` is one radius or one per step (a scheduled lr: the base lr follows it). A restart
    at ``eps == 0`` hands the base optimizer the step's normalised gradient ``d`` (for K = 1
    the limit of ``-buf / eps``), so its lr of 0 makes the outer step zero.
    """
    params = list(model.parameters())
    adam = torch.optim.Adam(params, lr=1.0)
    anchor: dict[int, torch.Tensor] = {}
    buf: dict[int, torch.Tensor] = {}
    for step_count, batch in enumerate(batches):
        e = eps[step_count] if isinstance(eps, list) else eps
        _backward(model, batch)
        t = step_count % k + 1
        with torch.no_grad():
            directions = {}
            for i, p in enumerate(params):
                if t == 1:
                    anchor[i] = p.detach().clone()
                    buf[i] = torch.zeros_like(p)
                d = directions[i] = p.grad / (torch.linalg.vector_norm(p.grad) + TINY)
                buf[i] = (1 - 1 / t) * buf[i] - (e / t) * d
                if trajectory == "official":
                    p.add_(buf[i])
                else:
                    p.copy_(anchor[i] + buf[i])
            if t == k:
                for i, p in enumerate(params):
                    p.copy_(anchor[i])
                    p.grad = -buf[i] / e if e > 0 else directions[i]
                adam.param_groups[0]["lr"] = e
                adam.step()


@pytest.mark.parametrize("trajectory", ["official", "textbook"])
def test_matches_the_literal_rule(trajectory: str) -> None:
    batches = _batches(8)  # K=3: two restarts and a trajectory in progress
    reference, model = TinyRNN(), TinyRNN()
    _literal_run(reference, batches, k=3, eps=1e-2, trajectory=trajectory)
    opt = FrankWolfe(model.parameters(), lr=1e-2, inner_steps=3, trajectory=trajectory)
    for batch in batches:
        _backward(model, batch)
        opt.step()
    for expected, found in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-7)


def test_trajectories_differ() -> None:
    batches = _batches(2)
    runs = {}
    for trajectory in ("official", "textbook"):
        model = TinyRNN()
        opt = FrankWolfe(model.parameters(), lr=1e-2, inner_steps=5, trajectory=trajectory)
        for batch in batches:
            _backward(model, batch)
            opt.step()
        runs[trajectory] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(runs["official"], runs["textbook"])


def test_anchor_swap_round_trip_and_step_guard() -> None:
    model = TinyRNN()
    opt = FrankWolfe(model.parameters(), lr=1e-2, inner_steps=4)
    start = [p.detach().clone() for p in model.parameters()]
    batch = _batches(1)[0]
    _backward(model, batch)
    opt.step()
    moved = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(start, moved, strict=True))
    with opt.anchor_weights():
        assert all(torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(moved, model.parameters(), strict=True))
    opt.swap_to_anchor()
    with pytest.raises(RuntimeError, match="restore_position"):
        opt.step()
    opt.restore_position()
    assert not opt.swapped


def test_zero_gradient_gives_no_nan() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = FrankWolfe([p], lr=1e-2, inner_steps=2)
    for _ in range(4):
        p.grad = torch.zeros(3)
        opt.step()
    assert torch.isfinite(p).all()


def test_radius_follows_the_scheduled_lr_unless_set() -> None:
    for radius, expected in ((None, 0.05), (0.2, 0.2)):
        p = nn.Parameter(torch.zeros(4))
        opt = FrankWolfe([p], lr=0.1, inner_steps=3, radius=radius)
        opt.param_groups[0]["lr"] = 0.05  # what a scheduler does
        p.grad = torch.tensor([3.0, 0.0, 4.0, 0.0])
        opt.step()  # t = 1: buf = -eps * d, moved by buf
        assert torch.linalg.vector_norm(p.detach()).item() == pytest.approx(expected, rel=1e-6)
        assert opt.base.param_groups[0]["lr"] == pytest.approx(0.05)


def test_base_optimizer_and_kwargs_are_configurable() -> None:
    p = nn.Parameter(torch.ones(2))
    opt = FrankWolfe(
        [p], lr=0.1, inner_steps=1, base_optimizer=torch.optim.SGD, base_kwargs={"momentum": 0.9}
    )
    p.grad = torch.tensor([1.0, 0.0])
    opt.step()
    assert isinstance(opt.base, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 1.0]))
    assert "base" in opt.state_dict() and opt.state_dict()["base"]["state"]


def _finite_state(opt: FrankWolfe) -> bool:
    def tensors(tree: object) -> list[torch.Tensor]:
        if isinstance(tree, torch.Tensor):
            return [tree]
        if isinstance(tree, dict):
            return [t for v in tree.values() for t in tensors(v)]
        return []

    return all(torch.isfinite(t).all() for t in tensors(opt.state_dict()))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("trajectory", ["official", "textbook"])
def test_zero_lr_set_directly_gives_a_zero_step(trajectory: str, k: int) -> None:
    model = TinyRNN()
    start = [p.detach().clone() for p in model.parameters()]
    opt = FrankWolfe(model.parameters(), lr=1e-2, inner_steps=k, trajectory=trajectory)
    opt.param_groups[0]["lr"] = 0.0  # what a scheduler at 0 does
    for batch in _batches(2 * k + 1):  # two restarts and a trajectory under way
        _backward(model, batch)
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True))
    assert _finite_state(opt)


def _zero_then_back(step: int) -> float:
    return (1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0)[step]


SCHEDULES = {  # each reaches an lr of exactly 0
    "LinearLR(end_factor=0)": lambda opt: torch.optim.lr_scheduler.LinearLR(
        opt, start_factor=1.0, end_factor=0.0, total_iters=4
    ),
    "PolynomialLR": lambda opt: torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=4),
    "warm-up from 0": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 3)),
    "0 and back": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, _zero_then_back),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("trajectory", ["official", "textbook"])
def test_scheduled_lr_reaching_zero_follows_the_rule_and_stays_finite(
    trajectory: str, k: int, schedule: str
) -> None:
    batches = _batches(12)
    model = TinyRNN()
    opt = FrankWolfe(model.parameters(), lr=1e-2, inner_steps=k, trajectory=trajectory)
    scheduler = SCHEDULES[schedule](opt)
    lrs, anchors = [], []
    for batch in batches:
        lrs.append(opt.param_groups[0]["lr"])
        _backward(model, batch)
        opt.step()
        scheduler.step()
        with opt.anchor_weights():
            anchors.append([p.detach().clone() for p in model.parameters()])
    assert 0.0 in lrs and _finite_state(opt)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    reference = TinyRNN()
    _literal_run(reference, batches, k=k, eps=lrs, trajectory=trajectory)
    for expected, found in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-7)
    for step in range(1, len(batches)):  # a restart at lr 0 leaves the anchor where it was
        if (step + 1) % k == 0 and lrs[step] == 0.0:
            assert all(
                torch.equal(a, b) for a, b in zip(anchors[step - 1], anchors[step], strict=True)
            )


@pytest.mark.parametrize("schedule", [None, "warm-up from 0", "0 and back"])
def test_one_inner_step_is_adam_on_normalised_gradients(schedule: str | None) -> None:
    """Independent reference: torch's Adam, under the same scheduler (an lr of 0 included: Adam
    then moves nothing and its moments still see the gradient)."""
    batches = _batches(12)
    reference, model = TinyRNN(), TinyRNN()
    adam = torch.optim.Adam(reference.parameters(), lr=1e-2)
    opt = FrankWolfe(model.parameters(), lr=1e-2, inner_steps=1)
    schedulers = [SCHEDULES[schedule](adam), SCHEDULES[schedule](opt)] if schedule else []
    for batch in batches:
        _backward(reference, batch)
        for p in reference.parameters():
            p.grad = p.grad / (torch.linalg.vector_norm(p.grad) + TINY)  # type: ignore[operator]
        adam.step()
        _backward(model, batch)
        opt.step()
        for scheduler in schedulers:
            scheduler.step()
    for expected, found in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-7)


def test_sparse_gradients_are_refused_naming_the_parameter_and_the_fix() -> None:
    dense, embedding = nn.Linear(3, 2), nn.Embedding(5, 3, sparse=True)
    opt = FrankWolfe(
        [{"params": dense.parameters()}, {"params": embedding.parameters()}], lr=1e-2, inner_steps=2
    )
    before = [p.detach().clone() for p in dense.parameters()]
    dense(embedding(torch.tensor([1, 2]))).sum().backward()
    with pytest.raises(
        ValueError, match=r"FrankWolfe.*sparse.*param group 1.*\(5, 3\).*sparse=False"
    ):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, dense.parameters(), strict=True))
    assert not opt.state


@pytest.mark.parametrize("trajectory", ["official", "textbook"])
def test_complex_parameters_move_as_their_real_view(trajectory: str) -> None:
    """Supported: the run equals the one on ``torch.view_as_real`` of the parameter."""
    runs = complex_least_squares(rows=3)
    (z, _), (r, _) = runs
    start = z.detach().clone()
    opts = [FrankWolfe([p], lr=0.05, inner_steps=3, trajectory=trajectory) for p, _ in runs]
    for _ in range(7):
        for (_, loss_fn), opt in zip(runs, opts, strict=True):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-12, atol=1e-12)
    assert not torch.equal(z.detach(), start)
