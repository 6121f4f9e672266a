"""Norm Loss (Georgiou et al., ICPR 2020, arXiv 2103.06583): keep every filter at unit L2 norm.

For each regularised weight with rows ``w_i`` (one per output filter or neuron; a conv weight
``(C_out, C_in, k, k)`` has ``C_out`` rows of length ``C_in k k``)::

    L_norm = sum_layers c_layer * sum_i (1 - ||w_i||_2)^2,  c_layer = 1/C_out ("mean"), 1 ("sum")
    dL_norm/dw_i = 2 c_layer (||w_i|| - 1) w_i / ||w_i||

The training objective is ``L + strength * L_norm``. :func:`add_norm_loss_grad_` adds the
gradient straight to ``.grad`` (no autograd graph) with a handful of vectorised operations whatever
the number of layers; :func:`norm_loss` returns the differentiable scalar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from lightning_dnn_tricks.validation import check_choice, check_number

Reduction = Literal["mean", "sum"]
REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum")

_ZERO_NORM = 1e-12


def _check_weights(weights: Sequence[Tensor]) -> None:
    if isinstance(weights, Tensor) or not isinstance(weights, Sequence):
        raise TypeError(
            f"`weights` must be a sequence (list, tuple) of tensors, got {type(weights).__name__}."
        )
    for weight in weights:
        if not isinstance(weight, Tensor):
            raise TypeError(
                f"`weights` must hold tensors only, got an item of type {type(weight).__name__}."
            )
        if weight.dim() < 2:
            raise ValueError(
                "Norm Loss acts on weights with one row per output unit (dim >= 2); "
                f"got a tensor of shape {tuple(weight.shape)}."
            )


def _row_dims(weight: Tensor) -> tuple[int, ...]:
    return tuple(range(1, weight.dim()))


def row_norms(weights: Sequence[Tensor]) -> list[Tensor]:
    """The L2 norm of every row (output unit) of each weight, computed in float32 or wider.

    A row whose sum of squares overflows the computation dtype (float32: a norm above about
    ``1.8e19``) has norm ``inf`` here; :func:`add_norm_loss_grad_` still gives it a finite,
    exact gradient.

    Raises:
        TypeError: ``weights`` is not a sequence of tensors.
        ValueError: a weight has fewer than 2 dimensions.
    """
    _check_weights(weights)
    return _row_norms(weights)


def _row_norms(weights: Sequence[Tensor]) -> list[Tensor]:
    return [
        torch.linalg.vector_norm(
            w.detach(), dim=_row_dims(w), dtype=torch.promote_types(w.dtype, torch.float32)
        )
        for w in weights
    ]


def norm_loss(weights: Sequence[Tensor], reduction: Reduction = "mean") -> Tensor:
    """The Norm Loss term (differentiable): ``sum_layers c_layer sum_i (1 - ||w_i||)^2``.

    Args:
        weights: tensors with one row per output unit (conv or linear weights).
        reduction: ``"mean"`` averages over the rows of each layer (the paper's ``1/C_out``),
            ``"sum"`` adds them.

    Returns:
        A scalar tensor; zero for an empty ``weights``. A weight without entries (0 rows or 0
        columns) holds nothing to regularise: it contributes 0 (with an empty gradient), like
        in :func:`add_norm_loss_grad_`.

    Raises:
        TypeError: ``weights`` is not a sequence of tensors.
        ValueError: a weight has fewer than 2 dimensions, or ``reduction`` is unknown.

    Note:
        In float32 a row norm above about ``1.8e19`` makes this loss ``inf`` (its true value is
        beyond float32) and its autograd gradient NaN; :func:`add_norm_loss_grad_` stays finite
        there.

    Examples:
        >>> import torch
        >>> w = torch.tensor([[3.0, 4.0], [0.6, 0.8]])   # row norms 5 and 1
        >>> norm_loss([w]).item()                        # ((1-5)^2 + 0) / 2
        8.0
    """
    check_choice("reduction", reduction, REDUCTIONS)
    _check_weights(weights)
    if not weights:
        return torch.zeros(())
    terms = []
    for w in weights:
        if w.numel() == 0:
            terms.append(w.sum())  # 0, in the graph
            continue
        squared = (1.0 - torch.linalg.vector_norm(w, dim=_row_dims(w))) ** 2
        terms.append(squared.mean() if reduction == "mean" else squared.sum())
    return torch.stack(terms).sum()


def add_norm_loss_grad_(
    weights: Sequence[Tensor], strength: float, reduction: Reduction = "mean"
) -> Tensor:
    """Add ``strength * dL_norm/dw`` to each weight's ``.grad`` in place; return the row norms.

    A weight whose ``.grad`` is ``None`` receives the Norm Loss gradient alone. A row of zeros
    (norm below ``1e-12``) gets zero gradient (the sub-gradient at the kink of ``||w||``), never
    NaN. A row whose norm overflows float32's squares (above about ``1.8e19``) gets the exact
    gradient ``2 c w_i``: its coefficient ``(||w_i|| - 1) / ||w_i||`` is 1 to float64 precision,
    so the update matches a float64 computation without an extra pass over the weights. A weight
    without entries (0 rows or 0 columns) is left alone.

    Args:
        weights: parameters with one row per output unit.
        strength: the factor ``lambda`` of ``L + lambda * L_norm`` (``>= 0``: a negative one
            would ascend the Norm Loss).
        reduction: ``"mean"`` (``1/C_out`` per layer, the paper's form) or ``"sum"``.

    Returns:
        All row norms of the weights with entries, concatenated (float32), measured before the
        update, for logging (see :func:`row_norms`: ``inf`` for a norm beyond float32's squares).

    Raises:
        TypeError: ``weights`` is not a sequence of tensors.
        ValueError: ``strength`` is negative, not finite or not a number; ``reduction`` is
            unknown; a weight has fewer than 2 dimensions (the message names the argument).

    Examples:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
        >>> norms = add_norm_loss_grad_([w], strength=0.5)
        >>> w.grad                                       # 0.5 * 2 * (5 - 1) * w / 5
        tensor([[2.4000, 3.2000]])
    """
    check_number("strength", strength, low=0.0)
    check_choice("reduction", reduction, REDUCTIONS)
    _check_weights(weights)
    weights = [w for w in weights if w.numel() > 0]  # shapes only: no host sync
    norms = _row_norms(weights)
    if not norms:
        return torch.zeros(0)
    for w in weights:
        if w.grad is None:
            w.grad = torch.zeros_like(w)
    all_norms, coefficients = _coefficients(weights, norms, strength, reduction)
    grads = [w.grad for w in weights]
    torch._foreach_addcmul_(grads, [w.detach() for w in weights], coefficients)  # type: ignore[arg-type]
    return all_norms


def _coefficients(
    weights: Sequence[Tensor], norms: list[Tensor], strength: float, reduction: Reduction
) -> tuple[Tensor, list[Tensor]]:
    """All row norms, and per weight ``2 c strength (||w_i|| - 1) / ||w_i||`` shaped to
    broadcast over its rows (0 for a zero row; 1 times the factor for an overflowing norm)."""
    rows = [n.numel() for n in norms]
    all_norms = torch.cat(norms)
    per_layer = [2.0 * strength / r if reduction == "mean" else 2.0 * strength for r in rows]
    factor = torch.repeat_interleave(
        torch.tensor(per_layer, dtype=all_norms.dtype, device=all_norms.device),
        torch.tensor(rows, device=all_norms.device),
        output_size=all_norms.numel(),
    )
    nonzero = all_norms > _ZERO_NORM
    coefficient = torch.where(nonzero, (all_norms - 1.0) / all_norms.clamp_min(_ZERO_NORM), 0.0)
    coefficient = torch.where(all_norms.isinf(), 1.0, coefficient)  # (inf - 1) / inf: 1, not NaN
    coefficient = coefficient * factor
    broadcastable = [
        c.to(w.dtype).view(-1, *([1] * (w.dim() - 1)))
        for c, w in zip(coefficient.split(rows), weights, strict=True)
    ]
    return all_norms, broadcastable


def apply_decoupled_norm_loss_(
    weights: Sequence[Tensor],
    lrs: Sequence[float],
    strength: float,
    reduction: Reduction = "mean",
) -> Tensor:
    """The decoupled Norm Loss update, in place: ``w_i <- w_i m_i``.

    ``m_i = 1 - lr 2 c strength (1 - 1/||w_i||)``: the form of the authors' code as ported in
    Ranger21 [2nd, author-derived], which scales the weights by the learning rate like AdamW's
    decoupled decay instead of adding ``strength * dL_norm/dw`` to the gradient
    (:func:`add_norm_loss_grad_`). Call it after the backward pass and before the optimizer's
    update (where Ranger21 and torch's AdamW apply their decay). ``c`` is ``1``
    (``reduction="sum"``, the authors' plain sum over rows) or ``1/C_out`` (``"mean"``, our
    per-layer choice). Under plain SGD (no momentum, no weight decay) it then gives exactly the
    weights of the gradient form with the same ``strength`` and ``reduction``; under Adam the two
    differ (Adam rescales the gradient form).

    Args:
        weights: parameters with one row per output unit.
        lrs: the learning rate of each weight's param group (``>= 0``; ``0`` leaves it alone).
        strength: the factor (``>= 0``; the authors' ``factor``, ``1e-4`` by default there).
        reduction: ``"mean"`` or ``"sum"``.

    Returns:
        All row norms (float32 or wider) of the weights with entries, measured before the update.

    Raises:
        TypeError: ``weights`` is not a sequence of tensors.
        ValueError: ``strength`` or an lr is negative or not finite, ``lrs`` and ``weights``
            differ in length, ``reduction`` is unknown, a weight has fewer than 2 dimensions.

    Examples:
        >>> import torch
        >>> w = torch.tensor([[3.0, 4.0]])                   # norm 5
        >>> _ = apply_decoupled_norm_loss_([w], [0.1], strength=0.5, reduction="sum")
        >>> w                                                # (1 - 0.1 * 2 * 0.5 * (1 - 1/5)) w
        tensor([[2.7600, 3.6800]])
    """
    check_number("strength", strength, low=0.0)
    check_choice("reduction", reduction, REDUCTIONS)
    _check_weights(weights)
    if isinstance(lrs, Tensor) or not isinstance(lrs, Sequence) or len(lrs) != len(weights):
        raise ValueError(f"`lrs` must hold one learning rate per weight ({len(weights)}).")
    for lr in lrs:
        check_number("lrs", lr, low=0.0)
    kept = [(w, lr) for w, lr in zip(weights, lrs, strict=True) if w.numel() > 0]
    if not kept:
        return torch.zeros(0)
    tensors = [w for w, _ in kept]
    all_norms, coefficients = _coefficients(tensors, _row_norms(tensors), strength, reduction)
    with torch.no_grad():
        detached = [w.detach() for w in tensors]
        torch._foreach_addcmul_(detached, detached, coefficients, [-lr for _, lr in kept])
    return all_norms


def mean_abs_norm_deviation(norms: Tensor) -> Tensor:
    """``mean_i |1 - ||w_i|| |`` over concatenated row norms (the logged health metric).

    Zero for no norms.

    Raises:
        TypeError: ``norms`` is not a tensor.
    """
    if not isinstance(norms, Tensor):
        raise TypeError(f"`norms` must be a tensor, got {type(norms).__name__}.")
    if norms.numel() == 0:
        return torch.zeros(())
    return (1.0 - norms).abs().mean()
