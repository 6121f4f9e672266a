"""FW-RNN against a literal step-by-step implementation of METHODS.md §1."""

from __future__ import annotations

import pytest
import torch
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


def _literal_run(model: nn.Module, batches: list, k: int, eps: float, trajectory: str) -> None:
    """The rule as written, one tensor at a time, with a separate Adam."""
    params = list(model.parameters())
    adam = torch.optim.Adam(params, lr=eps)
    anchor: dict[int, torch.Tensor] = {}
    buf: dict[int, torch.Tensor] = {}
    for step_count, batch in enumerate(batches):
        _backward(model, batch)
        t = step_count % k + 1
        with torch.no_grad():
            for i, p in enumerate(params):
                if t == 1:
                    anchor[i] = p.detach().clone()
                    buf[i] = torch.zeros_like(p)
                d = p.grad / (torch.linalg.vector_norm(p.grad) + TINY)
                buf[i] = (1 - 1 / t) * buf[i] - (eps / t) * d
                if trajectory == "official":
                    p.add_(buf[i])
                else:
                    p.copy_(anchor[i] + buf[i])
            if t == k:
                for i, p in enumerate(params):
                    p.copy_(anchor[i])
                    p.grad = -buf[i] / eps
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


def test_one_inner_step_is_adam_on_normalised_gradients() -> None:
    batches = _batches(5)
    reference, model = TinyRNN(), TinyRNN()
    adam = torch.optim.Adam(reference.parameters(), lr=1e-2)
    opt = FrankWolfe(model.parameters(), lr=1e-2, inner_steps=1)
    for batch in batches:
        _backward(reference, batch)
        for p in reference.parameters():
            p.grad = p.grad / (torch.linalg.vector_norm(p.grad) + TINY)  # type: ignore[operator]
        adam.step()
        _backward(model, batch)
        opt.step()
    for expected, found in zip(reference.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-7)


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
