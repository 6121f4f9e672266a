"""Adaptive importance sampling of training examples (Liu et al., ICPR 2020), as tensor maths.

Sampling example ``i`` of ``n`` with probability ``p_i`` and weighting its loss by
``w_i = 1 / (n p_i)`` keeps the minibatch gradient an unbiased estimate of the full-data mean
gradient: ``E_p[w_i grad l_i] = sum_i p_i grad l_i / (n p_i) = (1/n) sum_i grad l_i``. Its variance
is smallest when ``p_i`` is proportional to ``||grad l_i||``. Our reconstruction of the schedule
keeps one score ``G_i`` per example (a recent gradient-norm proxy) and mixes with uniform::

    p_i = (1 - theta) G_i / sum_j G_j + theta / n          (so w_i <= 1 / theta)

Score proxies: :func:`logit_grad_norm` (``||softmax(z_i) - onehot(y_i)||_2``, the exact gradient
norm of the cross-entropy w.r.t. the logits, free from the forward pass), the per-example loss,
and :func:`per_example_grad_norms` (the exact norm of the per-example parameter gradient through
``torch.func``; expensive, for checking the proxies). Pure torch: never imports Lightning.

Importance batches are mappings (what :class:`~lightning_dnn_tricks.data.ImportanceCollate`
builds) with the keys ``"example"`` (the wrapped dataset's collated batch), ``"index"`` (int64
``(B,)`` dataset indices), ``"weight"`` (float32 ``(B,)`` importance weights) and ``"record"``
(float32 ``(B, 3)``: the slots :func:`importance_weighted_mean` fills in place, read by the
callback; columns :data:`RECORD_APPLIED`, :data:`RECORD_LOSS`, :data:`RECORD_LOGIT_GRAD`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dnn_tricks.validation import check_number

Score = Literal["logit_grad", "loss", "grad_norm"]
SCORES: tuple[Score, ...] = ("logit_grad", "loss", "grad_norm")

#: Keys of an importance batch.
EXAMPLE_KEY, INDEX_KEY, WEIGHT_KEY, RECORD_KEY = "example", "index", "weight", "record"
#: Columns of ``batch["record"]``: 1 once the weights were applied, the per-example loss, the
#: exact logit-gradient norm (NaN until filled).
RECORD_APPLIED, RECORD_LOSS, RECORD_LOGIT_GRAD = 0, 1, 2
RECORD_WIDTH = 3


def _check_tensor(name: str, value: Any) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a tensor, got {type(value).__name__}.")


def _check_label_smoothing(label_smoothing: float) -> None:
    check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)


def importance_probabilities(scores: Tensor, theta: float = 0.3) -> Tensor:
    """Sampling probabilities ``p = (1 - theta) G / sum G + theta / n`` (float64, sums to 1).

    Scores must be a 1-D tensor; non-finite scores count as the largest finite score (an example
    whose gradient blew up is sampled often, never dropped) and negative ones as 0. When every
    score is 0 (or none is finite) the distribution is uniform.

    Args:
        scores: ``G``, one non-negative score per example, shape ``(n,)`` with ``n >= 1``.
        theta: mixing weight of the uniform distribution, in [0, 1]; every weight
            ``1 / (n p_i)`` is then at most ``1 / theta``.

    Raises:
        ValueError: ``theta`` is out of range or ``scores`` is not a non-empty 1-D tensor.
        TypeError: ``scores`` is not a tensor.

    Examples:
        >>> import torch
        >>> importance_probabilities(torch.tensor([3.0, 1.0]), theta=0.5)
        tensor([0.6250, 0.3750], dtype=torch.float64)
    """
    check_number("theta", theta, low=0.0, high=1.0)
    _check_tensor("scores", scores)
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(
            f"`scores` must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}."
        )
    g = scores.detach().to(torch.float64)
    finite = torch.isfinite(g)
    top = g[finite].max() if bool(finite.any()) else torch.zeros((), dtype=g.dtype)
    g = torch.where(finite, g, top.to(g.device)).clamp_min(0.0)
    n = g.numel()
    total = g.sum()
    if not total > 0:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=g.device)
    p = (1.0 - theta) * g / total + theta / n
    return p / p.sum()


def importance_weights(probabilities: Tensor, indices: Tensor | None = None) -> Tensor:
    """The weights ``1 / (n p_i)`` of the examples ``indices`` (all examples when ``None``).

    A zero probability gives an infinite weight (such an example is never drawn).

    Raises:
        TypeError: ``probabilities`` or ``indices`` is not a tensor.

    Examples:
        >>> import torch
        >>> importance_weights(torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0, 2]))
        tensor([0.6667, 1.3333])
    """
    _check_tensor("probabilities", probabilities)
    if indices is not None:
        _check_tensor("indices", indices)
    n = probabilities.numel()
    p = probabilities if indices is None else probabilities[indices]
    return 1.0 / (n * p)


def effective_sample_size(weights: Tensor) -> Tensor:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of a set of weights (0 if empty).

    Raises:
        TypeError: ``weights`` is not a tensor.
    """
    _check_tensor("weights", weights)
    w = weights.detach().to(torch.float64)
    squares = (w * w).sum()
    if w.numel() == 0 or not squares > 0:
        return torch.zeros((), dtype=torch.float64)
    return w.sum() ** 2 / squares


def ess_fraction(probabilities: Tensor) -> Tensor:
    """Effective sample size per draw of importance sampling from ``p``: ``n^2 / sum_i 1/p_i``.

    It is ``1 / E_p[w^2]`` for the weights ``w_i = 1/(n p_i)`` (whose mean under ``p`` is 1), in
    (0, 1], and 1 exactly for the uniform distribution; 0 when some ``p_i`` is 0.

    An empty ``probabilities`` (no examples) gives 1.0: with nothing to draw, importance sampling
    and uniform sampling coincide, so it loses no efficiency against uniform; 1.0 also keeps
    "1 means uniform" true and never trips a low-ESS alarm. (Kish's
    :func:`effective_sample_size` of no weights is 0: it counts samples, this is a ratio.)

    Raises:
        TypeError: ``probabilities`` is not a tensor.

    Examples:
        >>> import torch
        >>> ess_fraction(torch.full((4,), 0.25)).item()
        1.0
        >>> ess_fraction(torch.zeros(0)).item()
        1.0
    """
    _check_tensor("probabilities", probabilities)
    p = probabilities.detach().to(torch.float64)
    if p.numel() == 0:
        return torch.ones((), dtype=torch.float64, device=p.device)
    return p.numel() ** 2 / (1.0 / p).sum()


def logit_grad_norm(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Exact norm of the gradient of each example's cross-entropy w.r.t. its logits.

    For logits ``z_i`` ``(B, C)`` and class targets ``y_i`` ``(B,)`` it is
    ``||softmax(z_i) - q_i||_2`` with ``q_i`` the one-hot target (smoothed:
    ``(1 - eps) onehot + eps / C``). For per-position logits ``(B, T..., C)`` with targets
    ``(B, T...)`` and a per-example loss averaged over the ``T`` positions, it is
    ``sqrt(sum_t ||softmax(z_it) - q_it||^2) / T``. Computed in float32 or wider, no graph.
    With no positions (``T = 0``) the per-example loss, a mean over nothing, is taken as 0 with
    no gradient, so the norm is 0 (never NaN): such an example scores like one already learnt.

    Raises:
        TypeError: ``logits`` or ``targets`` is not a tensor.
        ValueError: the shapes do not match, there are no classes, or ``label_smoothing`` is
            not in ``[0, 1]``.

    Examples:
        >>> import torch
        >>> logit_grad_norm(torch.zeros(1, 2), torch.tensor([0]))   # ||(0.5, 0.5) - (1, 0)||
        tensor([0.7071])
    """
    _check_tensor("logits", logits)
    _check_tensor("targets", targets)
    _check_label_smoothing(label_smoothing)
    if logits.dim() < 2 or targets.shape != logits.shape[:-1] or logits.shape[-1] == 0:
        raise ValueError(
            "`logits` must be (B, ..., C) with C >= 1 and `targets` (B, ...) class indices, got "
            f"shapes {tuple(logits.shape)} and {tuple(targets.shape)}."
        )
    z = logits.detach()
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    num_classes = z.shape[-1]
    q = F.one_hot(targets.detach().long(), num_classes).to(z.dtype)
    if label_smoothing:
        q = (1.0 - label_smoothing) * q + label_smoothing / num_classes
    squared = (torch.softmax(z, dim=-1) - q).square().flatten(1).sum(dim=1)
    return squared.sqrt() / max(1, math.prod(targets.shape[1:]))  # T = 0: sum of nothing, 0


def is_importance_batch(batch: Any) -> bool:
    """Whether ``batch`` is a mapping with the ``"example"`` and ``"weight"`` keys."""
    return isinstance(batch, Mapping) and EXAMPLE_KEY in batch and WEIGHT_KEY in batch


def importance_weighted_mean(
    losses: Tensor,
    batch: Mapping[str, Any] | Tensor,
    *,
    logits: Tensor | None = None,
    targets: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The importance-weighted mean loss ``(1/B) sum_i w_i l_i``: use it as the training loss.

    This is the one way the importance weights reach the loss. With an importance batch it also
    records, in place in ``batch["record"]``, that the weights were applied, the per-example
    losses and (when ``logits`` and ``targets`` are given) the exact logit-gradient norms; the
    :class:`~lightning_dnn_tricks.callbacks.AdaptiveImportanceSampling` callback reads them as
    scores and raises when a training batch was not recorded.

    Args:
        losses: per-example losses ``(B,)`` (e.g. ``F.cross_entropy(..., reduction="none")``).
        batch: an importance batch (a mapping with ``"weight"``), or the weights ``(B,)`` alone.
        logits: the classification logits ``(B, ..., C)``, for the ``"logit_grad"`` score.
        targets: the class targets ``(B, ...)`` matching ``logits``.
        label_smoothing: the label smoothing of the cross-entropy (exact logit gradient).

    Returns:
        The weighted mean, a scalar; 0 (in the graph, with zero gradients) for an empty batch,
        where the mean of nothing would be NaN: an empty batch then changes nothing, as it
        carries no gradient information, and a sum of losses over batches stays finite.

    Raises:
        ValueError: the shapes of ``losses``, the weights, ``logits`` or ``targets`` disagree,
            or ``label_smoothing`` is not in ``[0, 1]``.
        TypeError: ``losses``, the weights, ``logits`` or ``targets`` is not a tensor, or
            ``batch`` is neither a mapping nor a tensor.

    Examples:
        >>> import torch
        >>> importance_weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.5]))
        tensor(2.5000)
        >>> importance_weighted_mean(torch.zeros(0), torch.zeros(0))
        tensor(0.)
    """
    _check_tensor("losses", losses)
    if isinstance(batch, Mapping):
        if WEIGHT_KEY not in batch:
            raise ValueError(f"`batch` is a mapping without the {WEIGHT_KEY!r} key.")
        weights = batch[WEIGHT_KEY]
    elif isinstance(batch, Tensor):
        weights = batch
    else:
        raise TypeError(f"`batch` must be a mapping or a tensor, got {type(batch).__name__}.")
    _check_tensor("batch['weight']", weights)
    _check_label_smoothing(label_smoothing)
    if losses.dim() != 1 or weights.shape != losses.shape:
        raise ValueError(
            "`losses` must be per-example losses (B,) matching the importance weights, got "
            f"shapes {tuple(losses.shape)} and {tuple(weights.shape)}."
        )
    if (logits is None) != (targets is None):
        raise ValueError("`logits` and `targets` must be given together.")
    record = batch.get(RECORD_KEY) if isinstance(batch, Mapping) else None
    if isinstance(record, Tensor):
        with torch.no_grad():
            record[:, RECORD_LOSS] = losses.detach().to(record.dtype)
            if logits is not None and targets is not None:
                norms = logit_grad_norm(logits, targets, label_smoothing)
                record[:, RECORD_LOGIT_GRAD] = norms.to(record.dtype)
            record[:, RECORD_APPLIED] = 1.0
    weighted = losses * weights.to(losses.dtype)
    if weighted.numel() == 0:  # a shape, not a value: no host sync
        return weighted.sum()
    return weighted.mean()


def per_example_grad_norms(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    chunk_size: int | None = 16,
) -> Tensor:
    """Exact L2 norms of the per-example parameter gradients ``||grad_theta l(f(x_i), y_i)||``.

    Uses ``torch.func.functional_call`` + ``vmap`` + ``grad`` over the trainable parameters,
    with the model in eval mode for the computation (BatchNorm uses its running statistics and
    is not updated, dropout is off; the mode is restored afterwards).

    Args:
        model: the network; ``model(x)`` for a batch of one example gives its outputs.
        loss_fn: ``loss_fn(outputs, targets)`` for a batch of one example, a scalar.
        inputs: the examples ``(B, ...)``.
        targets: their targets ``(B, ...)``.
        chunk_size: examples per vectorised chunk (memory grows with chunk x parameters);
            ``None``: all at once.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``loss_fn`` is not callable, or
            ``inputs``/``targets`` is not a tensor.
        ValueError: ``chunk_size`` is neither ``None`` nor an integer ``>= 1``.

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.fill_(1.0)
        >>> loss = lambda out, y: ((out - y) ** 2).sum()
        >>> per_example_grad_norms(layer, loss, torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1))
        tensor([2.])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be callable, got {type(loss_fn).__name__}.")
    _check_tensor("inputs", inputs)
    _check_tensor("targets", targets)
    if chunk_size is not None:
        check_number("chunk_size", chunk_size, low=1, integer=True)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def example_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = torch.func.functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    def example_norm(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        grads = torch.func.grad(example_loss)(p, x, y)
        return torch.sqrt(sum(g.float().square().sum() for g in grads.values()))

    was_training = model.training
    model.eval()
    try:
        norms: Tensor = torch.func.vmap(example_norm, in_dims=(None, 0, 0), chunk_size=chunk_size)(
            params, inputs, targets
        )
    finally:
        model.train(was_training)
    return norms
