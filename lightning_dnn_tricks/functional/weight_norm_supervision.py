"""Weight Norm Supervision (Guo, ICPR 2020): spectral norms, their penalty and projection.

Recurrent and predictive coding networks are dynamical systems; WNS keeps them stable by bounding
the spectral norm (the operator 2-norm) of different parts of the network with different bounds.
For a weight ``W`` acting as the linear map ``A_W`` (a matrix, or a convolution / transposed
convolution on inputs of a given shape)::

    sigma(W) = max_{||x|| = 1} ||A_W x||_2                      (power iteration, persistent v)
    penalty  = strength * relu(sigma(W) - bound)^2
    d penalty / dW = 2 strength relu(sigma - bound) * d sigma/dW,  d sigma/dW = grad_W <u, A_W v>
    projection:  W <- W * bound / sigma(W)   when sigma(W) > bound

Power iteration keeps the right singular vector ``v`` between calls (as ``torch``'s
``spectral_norm`` does), so one iteration per training step tracks the slowly changing weights.
The ``"reshape"`` estimate replaces a convolution by its weight reshaped to ``(C_out, -1)``
times ``sqrt(prod_i ceil(k_i / s_i))``, a cheaper *upper bound* of the operator norm.

:func:`contraction_check` runs a recurrence from two initial states with the same inputs and
reports how fast their distance shrinks (the echo state property, empirically).

Note:
    The paper's body was not available: the constraint scheme (groups, bounds, penalty/projection
    modes, the estimators) is **our reconstruction** from its abstract (METHODS.md, section 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv1d_weight, conv2d_weight, conv3d_weight

Estimate = Literal["operator", "reshape"]
ESTIMATES: tuple[Estimate, ...] = ("operator", "reshape")
OperatorKind = Literal["matrix", "conv", "conv_transpose"]

_EPS = 1e-12
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV_WEIGHT_GRAD = {1: conv1d_weight, 2: conv2d_weight, 3: conv3d_weight}


@dataclass(frozen=True)
class WeightOperator:
    """The linear map a weight applies, with its adjoint, for power iteration.

    Attributes:
        kind: ``"matrix"`` (``W.reshape(out, -1) @ x``), ``"conv"`` or ``"conv_transpose"``.
        input_shape: shape of one input ``x`` (no batch dimension for matrices: ``(n,)``; convs:
            ``(C_in, *spatial)``).
        scale: factor applied to the estimate (``> 1`` only for the reshape bound of a conv).
        module: the conv module whose hyper-parameters define the operator (``None``: matrix).
        output_shape: for convs, the recorded output shape ``(C_out, *spatial)`` (may be ``None``).
    """

    kind: OperatorKind
    input_shape: tuple[int, ...]
    scale: float = 1.0
    module: nn.Module | None = None
    output_shape: tuple[int, ...] | None = None

    def forward(self, weight: Tensor, x: Tensor) -> Tensor:
        """``A_W x`` for one input ``x`` of ``input_shape``."""
        if self.kind == "matrix":
            return weight.reshape(weight.shape[0], -1) @ x
        module = self.module
        assert isinstance(module, nn.modules.conv._ConvNd)
        batch = x.unsqueeze(0)
        if self.kind == "conv":
            conv_forward: Callable[..., Tensor] = module._conv_forward
            return conv_forward(batch, weight, None)[0]
        padding = _output_padding(module, self.input_shape, self.output_shape, transposed=True)
        return _transposed_conv(module, batch, weight, padding)

    def adjoint(self, weight: Tensor, y: Tensor) -> Tensor:
        """``A_W^T y`` (the adjoint) for one output ``y``."""
        if self.kind == "matrix":
            return weight.reshape(weight.shape[0], -1).T @ y
        module = self.module
        assert isinstance(module, nn.modules.conv._ConvNd)
        dims = weight.dim() - 2
        batch = y.unsqueeze(0)
        if self.kind == "conv_transpose":
            stride, padding, dilation = module.stride, module.padding, module.dilation
            return _CONV[dims](batch, weight, None, stride, padding, dilation, module.groups)[0]
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            # No closed-form transposed conv for these paddings: the adjoint is the vector-Jacobian
            # product of the forward (the operator is linear, so this is exact).
            with torch.enable_grad():
                x = torch.zeros(self.input_shape, dtype=y.dtype, device=y.device)
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.forward(weight.detach(), x), x, y)
            return grad
        padding = _output_padding(module, self.input_shape, None, transposed=False)
        return _transposed_conv(module, batch, weight, padding)


def _transposed_conv(
    module: nn.modules.conv._ConvNd, batch: Tensor, weight: Tensor, output_padding: tuple[int, ...]
) -> Tensor:
    padding = module.padding
    assert not isinstance(padding, str)
    conv_transpose = _CONV_T[weight.dim() - 2]
    out = conv_transpose(
        batch, weight, None, module.stride, padding, output_padding, module.groups, module.dilation
    )
    return out[0]


def _output_padding(
    module: nn.modules.conv._ConvNd,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...] | None,
    transposed: bool,
) -> tuple[int, ...]:
    """``output_padding`` making a transposed conv produce the wanted spatial size."""
    padding = module.padding
    assert not isinstance(padding, str)
    result = []
    for i, size in enumerate(input_shape[1:]):
        k, s, d, p = module.kernel_size[i], module.stride[i], module.dilation[i], padding[i]
        if transposed:
            if output_shape is None:
                result.append(int(module.output_padding[i]))
                continue
            result.append(output_shape[1 + i] - ((size - 1) * s - 2 * p + d * (k - 1) + 1))
        else:
            out = (size + 2 * p - d * (k - 1) - 1) // s + 1
            result.append(size - ((out - 1) * s - 2 * p + d * (k - 1) + 1))
    return tuple(result)


def _overlap_factor(module: nn.modules.conv._ConvNd) -> float:
    """``sqrt`` of the most outputs one input position feeds (reshape bound -> operator bound)."""
    count = 1
    for k, s, d in zip(module.kernel_size, module.stride, module.dilation, strict=True):
        count *= math.ceil(k / s) if d == 1 else k
    return math.sqrt(count)


def weight_operator(
    weight: Tensor,
    module: nn.Module | None = None,
    estimate: Estimate = "operator",
    input_shape: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
) -> WeightOperator:
    """The operator whose spectral norm is supervised for ``weight``.

    Args:
        weight: the parameter (``dim >= 2``).
        module: its owner. A ``Conv*d``/``ConvTranspose*d`` weight with ``estimate="operator"``
            is the convolution on inputs of ``input_shape``; anything else is the matrix
            ``weight.reshape(weight.shape[0], -1)``.
        estimate: ``"operator"`` (exact map) or ``"reshape"`` (for convs, the reshaped matrix
            times ``sqrt(prod ceil(k/s))``: an upper bound of the operator norm).
        input_shape: ``(C_in, *spatial)`` of one input, required for the conv operator.
        output_shape: the output shape of a transposed conv called with ``output_size``.

    Raises:
        ValueError: ``weight`` has fewer than 2 dimensions, an unknown ``estimate``, or a conv
            operator without ``input_shape``.
    """
    if weight.dim() < 2:
        raise ValueError(f"spectral norms need a weight with dim >= 2, got {tuple(weight.shape)}.")
    if estimate not in ESTIMATES:
        raise ValueError(f"`estimate` must be one of {ESTIMATES}, got {estimate!r}.")
    columns = (math.prod(weight.shape[1:]),)
    if not isinstance(module, nn.modules.conv._ConvNd) or weight is not module.weight:
        return WeightOperator("matrix", columns)
    if estimate == "reshape":
        return WeightOperator("matrix", columns, scale=_overlap_factor(module))
    if input_shape is None:
        raise ValueError("the conv operator needs `input_shape` (C_in, *spatial) of one input.")
    kind: OperatorKind = "conv_transpose" if module.transposed else "conv"
    shape = tuple(int(n) for n in input_shape)
    out = None if output_shape is None else tuple(int(n) for n in output_shape)
    return WeightOperator(kind, shape, module=module, output_shape=out)


@dataclass(frozen=True)
class SpectralNormEstimate:
    """A power-iteration result: ``sigma ~ <u, A v>`` with unit vectors ``u`` and ``v``.

    ``sigma`` (float32 scalar, ``scale`` included) is a lower bound of the operator's norm that
    tightens with iterations; ``v`` is the persistent vector to pass to the next call.
    """

    sigma: Tensor
    u: Tensor
    v: Tensor


def initial_vector(operator: WeightOperator, seed: int = 0, device: Any = None) -> Tensor:
    """A unit random vector of the operator's input shape from a seeded generator (float32).

    Uses its own generator, so the global random state (and hence a resumed run) is untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(operator.input_shape, generator=generator)
    return (v / v.norm()).to(device)


def power_iteration(
    weight: Tensor, operator: WeightOperator, v: Tensor, iterations: int = 1
) -> SpectralNormEstimate:
    """Run ``iterations`` power iterations from ``v`` and estimate the spectral norm.

    Each iteration costs one forward and one adjoint application. A zero weight gives ``sigma=0``
    and keeps ``v`` (never NaN).

    Examples:
        >>> import torch
        >>> w = torch.diag(torch.tensor([3.0, 1.0]))
        >>> op = weight_operator(w)
        >>> power_iteration(w, op, initial_vector(op), iterations=30).sigma.item()
        3.0
    """
    if iterations < 1:
        raise ValueError(f"`iterations` must be >= 1, got {iterations}.")
    with torch.no_grad():
        w = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
        v = v.to(w.dtype)
        u = torch.zeros(())
        length = torch.zeros((), dtype=w.dtype, device=w.device)
        for _ in range(iterations):
            image = operator.forward(w, v)
            u = image / image.norm().clamp_min(_EPS)
            back = operator.adjoint(w, u)
            length = back.norm()
            v = torch.where(length > _EPS, back / length.clamp_min(_EPS), v)
        return SpectralNormEstimate((length * operator.scale).float(), u, v.float())


def spectral_norm_grad(
    weight: Tensor, operator: WeightOperator, estimate: SpectralNormEstimate
) -> Tensor:
    """``d sigma / dW`` at the estimate's vectors, ``grad_W <u, A_W v>``.

    ``u v^T`` for a matrix; for a conv the weight gradient of the convolution (input ``v``, output
    gradient ``u``), for a transposed conv the same with the roles swapped (``<u, A_W v> =
    <A_W^T u, v>`` and ``A_W^T`` is the convolution); autograd for other paddings.
    """
    w = weight.detach()
    u, v = estimate.u.to(w.dtype), estimate.v.to(w.dtype)
    module = operator.module
    if operator.kind == "matrix":
        grad = torch.outer(u, v).reshape(w.shape)
    elif (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    ):
        conv_input, conv_output = (v, u) if operator.kind == "conv" else (u, v)
        grad = _CONV_WEIGHT_GRAD[w.dim() - 2](
            conv_input.unsqueeze(0),
            w.shape,
            conv_output.unsqueeze(0),
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
        )
    else:
        with torch.enable_grad():
            leaf = w.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad((operator.forward(leaf, v) * u).sum(), leaf)
    return grad * operator.scale


def spectral_penalty(sigmas: Tensor, bound: float) -> Tensor:
    """``sum relu(sigma - bound)^2`` over the given norms (the penalty before ``strength``)."""
    return F.relu(sigmas - bound).pow(2).sum()


def add_spectral_penalty_grad_(
    weight: Tensor,
    operator: WeightOperator,
    estimate: SpectralNormEstimate,
    bound: float,
    strength: float,
) -> Tensor:
    """Add ``d/dW strength * relu(sigma - bound)^2`` to ``weight.grad``; return the penalty.

    Nothing is added while ``sigma <= bound``. A ``None`` gradient becomes the penalty's alone.
    """
    excess = float(estimate.sigma) - bound
    if excess <= 0.0:
        return torch.zeros(())
    grad = spectral_norm_grad(weight, operator, estimate) * (2.0 * strength * excess)
    if weight.grad is None:
        weight.grad = grad.to(weight.dtype)
    else:
        weight.grad.add_(grad.to(weight.grad.dtype))
    return torch.tensor(strength * excess * excess)


def project_spectral_norm_(weight: Tensor, sigma: Tensor | float, bound: float) -> float:
    """Rescale ``weight`` in place to ``weight * bound / sigma`` if ``sigma > bound``.

    Returns:
        The supervised norm after the projection, ``min(sigma, bound)``.
    """
    value = float(sigma)
    if value > bound:
        with torch.no_grad():
            weight.mul_(bound / value)
        return bound
    return value


# --------------------------------------------------------------------------- stability check
State = Tensor | Sequence[Tensor]


@dataclass(frozen=True)
class ContractionReport:
    """Distances between two trajectories of a recurrence driven by the same inputs.

    Attributes:
        distances: ``d_t = ||state_a(t) - state_b(t)||`` for ``t = 0..T`` (float64).
        ratio: ``d_T / d_0``.
        rate: ``ratio ** (1 / T)``, the mean contraction factor per step.
        contracting: ``ratio <= tolerance``: the recurrence forgot its initial state.
    """

    distances: Tensor
    ratio: float
    rate: float
    contracting: bool


def _distance(a: State, b: State) -> Tensor:
    left = [a] if isinstance(a, Tensor) else list(a)
    right = [b] if isinstance(b, Tensor) else list(b)
    squares = [(x.double() - y.double()).pow(2).sum() for x, y in zip(left, right, strict=True)]
    return torch.stack(squares).sum().sqrt()


def contraction_check(
    step: Callable[[Any, Any], Any],
    inputs: Sequence[Any],
    state_a: State,
    state_b: State,
    tolerance: float = 1e-3,
) -> ContractionReport:
    """Run ``state <- step(state, x_t)`` from two initial states with the same inputs.

    Args:
        step: one step of the recurrence, ``step(state, x_t) -> state`` (a tensor or a sequence of
            tensors, e.g. an LSTM's ``(h, c)`` or a PCN's per-layer states).
        inputs: the inputs ``x_1..x_T``; repeat one input (``[x] * 100``) for a constant drive.
        state_a: the first initial state.
        state_b: the second (must differ from ``state_a``).
        tolerance: the recurrence counts as contracting when ``d_T <= tolerance * d_0``.
            Distances stop shrinking near the states' floating-point resolution (about ``1e-7``
            of their size in float32): pick ``T`` so that a contracting run stays above it when
            ``rate`` matters.

    Returns:
        A :class:`ContractionReport`.

    Raises:
        ValueError: no inputs, identical initial states, or a non-positive ``tolerance``.

    Examples:
        >>> import torch
        >>> w = 0.5 * torch.eye(3)
        >>> report = contraction_check(lambda h, x: torch.tanh(h @ w + x), [torch.zeros(3)] * 20,
        ...                            torch.ones(3), -torch.ones(3))
        >>> report.contracting, round(report.rate, 2) <= 0.5
        (True, True)
    """
    if len(inputs) == 0:
        raise ValueError("`inputs` must hold at least one step.")
    if not tolerance > 0:
        raise ValueError(f"`tolerance` must be > 0, got {tolerance!r}.")
    with torch.no_grad():
        start = _distance(state_a, state_b)
        if start == 0:
            raise ValueError("`state_a` and `state_b` must differ.")
        distances = [start]
        for x in inputs:
            state_a, state_b = step(state_a, x), step(state_b, x)
            distances.append(_distance(state_a, state_b))
    values = torch.stack(distances)
    ratio = float(values[-1] / start)
    rate = ratio ** (1.0 / len(inputs))
    return ContractionReport(values, ratio, rate, ratio <= tolerance)


def rnn_step(rnn: nn.RNNBase) -> Callable[[Any, Tensor], Any]:
    """``step(state, x_t)`` for :func:`contraction_check` on a ``nn.RNN``/``GRU``/``LSTM``.

    ``x_t`` is one time step ``(B, input_size)``; the state is ``h`` ``(num_layers, B, H)`` (an
    LSTM's is ``(h, c)``).
    """

    def step(state: Any, x_t: Tensor) -> Any:
        _, new_state = rnn(x_t.unsqueeze(1 if rnn.batch_first else 0), state)
        return new_state

    return step


def tanh_rnn_norms(rnn: nn.RNN) -> list[float]:
    """Exact ``||W_hh||_2`` of every layer (and direction) of a tanh ``nn.RNN``.

    All below 1 is the classic sufficient condition for the echo state property of a tanh RNN
    (``|tanh'| <= 1``, so ``||h_a - h_b||`` shrinks by ``||W_hh||_2`` per step).

    Raises:
        ValueError: ``rnn`` is not a tanh ``nn.RNN``.
    """
    if not isinstance(rnn, nn.RNN) or rnn.nonlinearity != "tanh":
        raise ValueError(f"`rnn` must be a tanh nn.RNN, got {type(rnn).__name__}.")
    return [
        float(torch.linalg.matrix_norm(weight.detach(), ord=2))
        for name, weight in rnn.named_parameters()
        if name.startswith("weight_hh")
    ]
