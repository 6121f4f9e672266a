"""Conformance of this library's optimizers in a plain PyTorch loop (no Lightning)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from lightning_dnn_tricks.optim import SGDG2, SRK2, FrankWolfe

Factory = Callable[..., torch.optim.Optimizer]

OPTIMIZERS: dict[str, Factory] = {
    "sgdg2": lambda params, **kw: SGDG2(params, **{"lr": 1e-3, "h_max": 1.0, **kw}),
    "srk2": lambda params, **kw: SRK2(params, **{"lr": 1e-3, **kw}),
    "frank_wolfe": lambda params, **kw: FrankWolfe(params, **{"lr": 1e-2, "inner_steps": 3, **kw}),
}


@pytest.fixture(params=sorted(OPTIMIZERS))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _step(opt: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]) -> float:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    loss = opt.step(closure)  # FrankWolfe calls the closure once, SGD-G2 twice
    return float(loss.detach())


def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def _batches(n: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 4, generator=generator, dtype=dtype),
            torch.randn(16, 1, generator=generator, dtype=dtype),
        )
        for _ in range(n)
    ]


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], torch.Tensor]:
    return lambda: nn.functional.mse_loss(model(batch[0]), batch[1])


def test_group_level_bad_values_raise_naming_the_argument(name: str) -> None:
    weight = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="`lr`"):
        OPTIMIZERS[name]([{"params": [weight], "lr": -1.0}])


def test_lockstep_state_dict_round_trip(name: str) -> None:
    """Two runs in lockstep; the second is rebuilt from a mid-run checkpoint: they stay equal."""
    batches = _batches(11)
    model_a, model_b = _model(), _model()
    opt_a, opt_b = OPTIMIZERS[name](model_a.parameters()), OPTIMIZERS[name](model_b.parameters())
    for batch in batches[:4]:  # 4 steps: mid-trajectory for FrankWolfe (K=3)
        _step(opt_a, _mse(model_a, batch))
        _step(opt_b, _mse(model_b, batch))
    swap = isinstance(opt_b, FrankWolfe)
    if swap:  # checkpoint as the Lightning path writes it: anchor weights in the model
        opt_b.swap_to_anchor()
    saved_model = {k: v.clone() for k, v in model_b.state_dict().items()}
    saved_opt = opt_b.state_dict()
    model_c = _model(seed=5)
    opt_c = OPTIMIZERS[name](model_c.parameters(), lr=0.5)  # other settings, overwritten on load
    model_c.load_state_dict(saved_model)
    opt_c.load_state_dict(saved_opt)
    if swap:
        opt_c.restore_position()  # type: ignore[attr-defined]
    for batch in batches[4:]:
        _step(opt_a, _mse(model_a, batch))
        _step(opt_c, _mse(model_c, batch))
    for (key, a), c in zip(
        model_a.state_dict().items(), model_c.state_dict().values(), strict=True
    ):
        assert torch.equal(a, c), key
    assert opt_a.param_groups[0]["lr"] == opt_c.param_groups[0]["lr"]


def _rosenbrock(p: torch.Tensor) -> torch.Tensor:
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def _ill_conditioned(p: torch.Tensor) -> torch.Tensor:
    curvatures = torch.logspace(0, 2, p.numel(), dtype=p.dtype)  # condition number 100
    return 0.5 * (curvatures * p**2).sum()


@pytest.mark.parametrize(
    ("function", "start", "optimum"),
    [(_rosenbrock, [-1.5, 2.0], [1.0, 1.0]), (_ill_conditioned, [1.0] * 10, [0.0] * 10)],
    ids=["rosenbrock", "quadratic"],
)
def test_converges(name: str, function: Any, start: list[float], optimum: list[float]) -> None:
    p = nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = OPTIMIZERS[name]([p])
    initial = float(function(p))
    for _ in range(3000):
        _step(opt, lambda: function(p))
    final = float(function(p))
    assert final < initial / 100
    if name != "srk2":  # a fixed small step gets only part of the way in 3000 steps
        assert torch.dist(p.detach(), torch.tensor(optimum, dtype=torch.float64)) < 0.05


def test_param_groups_keep_their_own_settings(name: str) -> None:
    model = _model()
    first, second = model[0], model[2]
    if name == "frank_wolfe":
        groups = [
            {"params": first.parameters(), "inner_steps": 1},
            {"params": second.parameters(), "inner_steps": 3, "lr": 1e-3},
        ]
    else:
        groups = [{"params": first.parameters()}, {"params": second.parameters(), "lr": 1e-2}]
    opt = OPTIMIZERS[name](groups)
    before = [p.detach().clone() for p in second.parameters()]
    _step(opt, _mse(model, _batches(1)[0]))
    if name == "frank_wolfe":
        opt.swap_to_anchor()  # type: ignore[attr-defined]
        # K=1 group took an Adam step; the K=3 group is still at its anchor.
        assert all(torch.equal(b, p) for b, p in zip(before, second.parameters(), strict=True))
        assert opt.param_groups[1]["inner_steps"] == 3
    elif name == "sgdg2":
        lr_first, lr_second = (group["lr"] for group in opt.param_groups)
        assert lr_first != 1e-3 and lr_second != 1e-2 and lr_first != lr_second
    else:
        assert [group["lr"] for group in opt.param_groups] == [1e-3, 1e-2]
    assert opt.param_groups[1]["lr"] != opt.param_groups[0]["lr"]


def test_bf16_parameters(name: str) -> None:
    model = _model(dtype=torch.bfloat16)
    opt = OPTIMIZERS[name](model.parameters(), lr=1e-2)
    batch = _batches(1, dtype=torch.bfloat16)[0]
    losses = [_step(opt, _mse(model, batch)) for _ in range(30)]
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < losses[0]


def test_parameter_without_gradient_is_skipped(name: str) -> None:
    model = _model()
    unused = nn.Parameter(torch.ones(3))
    opt = OPTIMIZERS[name]([*model.parameters(), unused])
    for batch in _batches(4):
        _step(opt, _mse(model, batch))
    assert torch.equal(unused, torch.ones(3))
    assert unused not in opt.state or not opt.state[unused]
