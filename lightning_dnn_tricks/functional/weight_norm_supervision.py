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
    modes, the estimators) is **our reconstruction** from its abstract (see its method card).
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

from lightning_dnn_tricks.validation import check_number

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


#: The most power iterations one call runs (a bound, so that a typo cannot run for ever).
MAX_ITERATIONS = 100_000


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
    check_number("iterations", iterations, low=1, high=MAX_ITERATIONS, integer=True)
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


#: The most Lanczos vectors kept per weight; the bidiagonalisation restarts from its Ritz vector
#: after this many iterations (memory: this many input- and output-sized vectors per weight).
KRYLOV_DIMENSION = 32
#: The weight of the fixed random vector mixed into the starting vector of
#: :func:`converge_spectral_norms` (a stale vector nearly orthogonal to the new top singular
#: vector would otherwise stall on the second one).
START_MIX = 0.1


@dataclass(frozen=True)
class ConvergedNorms:
    """The result of :func:`converge_spectral_norms`, one entry per weight.

    Attributes:
        estimates: the final estimates (``v``, the top Ritz vector, is the vector to persist).
        sigmas: their ``sigma`` as Python floats (no further read from the device).
        iterations: the iterations each weight ran (one forward and one adjoint application
            each, as a power iteration).
        converged: whether the stopping rule was met (``False``: ``max_iterations`` ran out).
    """

    estimates: list[SpectralNormEstimate]
    sigmas: list[float]
    iterations: list[int]
    converged: list[bool]


class _Bidiagonalisation:
    """Golub-Kahan-Lanczos bidiagonalisation of one operator, with full reorthogonalisation.

    After ``k`` steps ``A P_k = U_k B_k`` with orthonormal ``P_k``, ``U_k`` and ``B_k`` upper
    bidiagonal (``alphas`` on the diagonal, ``betas`` above it), so the largest singular value of
    ``B_k`` is ``||A P_k y||`` for a unit ``y``: a lower bound of ``||A||`` that grows with ``k``
    (much faster than the power iteration's, which lies in the same Krylov space).
    """

    def __init__(self, weight: Tensor, operator: WeightOperator, start: Tensor) -> None:
        self.weight = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
        self.operator = operator
        self.sigma = 0.0  # largest singular value of B_k (operator.scale not included)
        #: The best estimate and Ritz vectors ``(sigma, u, v)`` of an earlier cycle.
        self.best: tuple[float, Tensor, Tensor] | None = None
        self.output_shape: torch.Size | None = None
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.left: list[Tensor] = []
        self.right: list[Tensor] = []
        self._pending: tuple[Tensor, Tensor] | None = None
        self._start(start.to(self.weight.dtype).flatten())

    def _start(self, p: Tensor) -> None:
        self.right = [p / p.norm().clamp_min(_EPS)]
        self.left, self.alphas, self.betas = [], [], []
        self._pending = None

    def restart(self) -> None:
        """Start a new cycle from this cycle's top Ritz vector, keeping the best result."""
        u, v = self.ritz()
        if self.best is None or self.sigma > self.best[0]:
            self.best = (self.sigma, u, v)
        self._start(v.flatten())

    @staticmethod
    def _orthogonalise(x: Tensor, basis: list[Tensor]) -> Tensor:
        if not basis:
            return x
        q = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan-Parlett "twice is enough")
            x = x - q.T @ (q @ x)
        return x

    def step(self) -> tuple[Tensor, Tensor]:
        """One step; returns ``alpha_k`` and ``beta_k`` (on the device, not read)."""
        p = self.right[-1]
        image = self.operator.forward(self.weight, p.reshape(self.operator.input_shape))
        self.output_shape = image.shape
        u = image.flatten()
        if self.left:
            u = u - self.betas[-1] * self.left[-1]
        u = self._orthogonalise(u, self.left)
        alpha = u.norm()
        u = u / alpha.clamp_min(_EPS)
        back = self.operator.adjoint(self.weight, u.reshape(image.shape)).flatten()
        r = self._orthogonalise(back - alpha * p, self.right)
        beta = r.norm()
        self._pending = (u, r / beta.clamp_min(_EPS))
        return alpha, beta

    def accept(self, alpha: float, beta: float) -> None:
        """Record the step's ``alpha``, ``beta`` (read on the host) and update ``sigma``."""
        assert self._pending is not None
        u, p_next = self._pending
        self.left.append(u)
        self.alphas.append(alpha)
        self.betas.append(beta)
        self.right.append(p_next)
        self._pending = None
        self.sigma = float(torch.linalg.svdvals(self._matrix())[0])

    def _matrix(self) -> Tensor:
        k = len(self.alphas)
        b = torch.zeros(k, k, dtype=torch.float64)
        b[range(k), range(k)] = torch.tensor(self.alphas, dtype=torch.float64)
        if k > 1:
            b[range(k - 1), range(1, k)] = torch.tensor(self.betas[:-1], dtype=torch.float64)
        return b

    def result(self) -> tuple[float, Tensor, Tensor]:
        """The best estimate (without ``operator.scale``) and its vectors ``(u, v)``."""
        u, v = self.ritz()
        if self.best is not None and self.best[0] > self.sigma:
            return self.best
        return self.sigma, u, v

    def ritz(self) -> tuple[Tensor, Tensor]:
        """The top Ritz vectors ``(u, v)`` in the operator's output and input shapes."""
        left, _, right = torch.linalg.svd(self._matrix())  # on the host: k x k
        x, y = left[:, 0], right[0]
        if float(y.sum()) < 0:  # a fixed sign: the same vectors on every rank and every run
            x, y = -x, -y
        device, dtype = self.weight.device, self.weight.dtype
        k = len(self.alphas)
        v = y.to(device=device, dtype=dtype) @ torch.stack(self.right[:k])
        u = x.to(device=device, dtype=dtype) @ torch.stack(self.left[:k])
        assert self.output_shape is not None
        v = v / v.norm().clamp_min(_EPS)
        u = u / u.norm().clamp_min(_EPS)
        return u.reshape(self.output_shape), v.reshape(self.operator.input_shape)


def converge_spectral_norms(
    weights: Sequence[Tensor],
    operators: Sequence[WeightOperator],
    vectors: Sequence[Tensor],
    tolerance: float = 1e-2,
    max_iterations: int = 100,
    mix_vectors: Sequence[Tensor] | None = None,
) -> ConvergedNorms:
    """Estimate the spectral norms of several weights until each estimate has converged.

    Power iteration is slow exactly where a bound needs it to be accurate: when the largest
    singular values are close (random-like matrices, weights projected to a bound step after
    step), its estimate creeps up by tiny steps for many iterations and looks converged while
    still percents low. This runs Golub-Kahan-Lanczos bidiagonalisation instead (the same forward
    and adjoint applications, so convolution operators work too, plus a reorthogonalisation
    against the kept vectors): its estimate, the largest singular value of the bidiagonal
    matrix, is still a lower bound, and converges much faster.

    Each weight starts from its persistent vector with a fixed random vector mixed in
    (weight ``START_MIX``; a stale vector orthogonal to the new top singular vector would stall)
    and stops when its estimate changed by at most ``tolerance**2 / 10`` (relative) in an
    iteration, after at least two. Each iteration runs one step on every weight still iterating,
    then reads all their step sizes from the device at once: one host synchronisation per
    iteration, not per weight and iteration.

    Args:
        weights: the weights.
        operators: their operators (:func:`weight_operator`).
        vectors: their starting (persistent) vectors, of the operators' input shapes.
        tolerance: the relative error allowed on ``sigma`` (> 0): the stopping rule above.
        max_iterations: the most iterations per weight (>= 2).
        mix_vectors: the random vectors to mix in, one per weight (default: ``initial_vector(op,
            seed=1)``; pass them to avoid drawing them at every call).

    Returns:
        A :class:`ConvergedNorms`. ``sigma(W) <= sigma * (1 + tolerance)`` once converged, in
        every test and benchmark case; a plateau of the estimate that outlasts the stopping rule
        can end it early (rare; see the method card), so this is a measured tolerance, not a
        proof.

    Raises:
        ValueError: the sequences differ in length, ``tolerance <= 0`` or ``max_iterations < 2``.

    Examples:
        >>> import torch
        >>> w = torch.diag(torch.tensor([1.0, 0.99, 0.98, 0.5]))
        >>> op = weight_operator(w)
        >>> result = converge_spectral_norms([w], [op], [torch.tensor([0.1, 1.0, 1.0, 1.0])])
        >>> round(result.sigmas[0], 4), result.converged[0]
        (1.0, True)
    """
    count = len(weights)
    mixes = mix_vectors if mix_vectors is not None else [None] * count
    if len(operators) != count or len(vectors) != count or len(mixes) != count:
        raise ValueError(
            f"`weights`, `operators`, `vectors` (and `mix_vectors`) must have one entry per "
            f"weight, got {count}, {len(operators)}, {len(vectors)} and {len(mixes)}."
        )
    check_number("tolerance", tolerance, low=0.0, high=1.0, low_inclusive=False)
    check_number("max_iterations", max_iterations, low=2, high=MAX_ITERATIONS, integer=True)
    threshold = tolerance**2 / 10
    with torch.no_grad():
        runs = []
        for weight, operator, vector, mix in zip(weights, operators, vectors, mixes, strict=True):
            if mix is None:
                mix = initial_vector(operator, seed=1)
            start = vector.to(weight.device) + START_MIX * mix.to(weight.device)
            runs.append(_Bidiagonalisation(weight, operator, start))
        iterations = [0] * count
        converged = [False] * count
        previous = [0.0] * count
        active = list(range(count))
        while active:
            steps = [runs[i].step() for i in active]
            read = torch.stack([torch.stack(pair) for pair in steps]).double().tolist()
            still = []
            for i, (alpha, beta) in zip(active, read, strict=True):
                run = runs[i]
                run.accept(alpha, beta)
                iterations[i] += 1
                sigma = run.sigma
                change = abs(sigma - previous[i]) / max(sigma, _EPS)
                previous[i] = sigma
                # beta ~ 0: the Krylov space is invariant, sigma is exact.
                exhausted = beta <= 1e-6 * max(sigma, _EPS) or alpha <= _EPS
                if (len(run.alphas) >= 2 and change <= threshold) or exhausted:
                    converged[i] = True
                elif iterations[i] < max_iterations:
                    if len(run.alphas) >= KRYLOV_DIMENSION:
                        run.restart()
                        previous[i] = 0.0
                    still.append(i)
            active = still
        estimates = []
        sigmas = []
        for run, operator in zip(runs, operators, strict=True):
            best, u, v = run.result()
            value = best * operator.scale
            sigmas.append(value)
            estimates.append(
                SpectralNormEstimate(
                    torch.tensor(value, dtype=torch.float32, device=v.device), u.float(), v.float()
                )
            )
    return ConvergedNorms(estimates, sigmas, iterations, converged)


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
    check_number("bound", bound, low=0.0, low_inclusive=False)
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
    check_number("bound", bound, low=0.0, low_inclusive=False)
    check_number("strength", strength, low=0.0)
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

    ``sigma`` should be a converged estimate (:func:`converge_spectral_norms`): a power-iteration
    estimate is a lower bound, and the exact norm after the projection is ``bound * sigma_true /
    sigma``.

    Returns:
        The supervised norm after the projection, ``min(sigma, bound)`` (a clipped value: log
        ``sigma``, the measured norm, not this).
    """
    check_number("bound", bound, low=0.0, low_inclusive=False)
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
    check_number("tolerance", tolerance, low=0.0, low_inclusive=False)
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
