"""Magnitude pruning (Frankle & Carbin 2019; Renda et al. 2020; Zullich et al., ICPR 2020).

A mask is a boolean tensor shaped like its weight (``True``: the weight survives). One pruning round
removes the ``amount`` smallest-magnitude *surviving* weights, over all selected tensors at once
(``scope="global"``) or in each tensor separately (``"layerwise"``)::

    keep_r = round(n * (1 - sparsity_r)),  sparsity_r = 1 - (1 - amount)^r   (after r rounds)

Weights already pruned always rank below every survivor, so masks only ever lose entries. The
masks are enforced by multiplying weights, gradients and optimizer state (momentum, Adam moments)
with them, a handful of ``torch._foreach_*`` calls whatever the number of tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_dnn_tricks.validation import check_choice, check_number, check_text

Scope = Literal["global", "layerwise"]
SCOPES: tuple[Scope, ...] = ("global", "layerwise")


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _check_masks(weights: Sequence[Tensor], masks: Sequence[Tensor] | None) -> list[Tensor]:
    if masks is None:
        return [torch.ones_like(w, dtype=torch.bool) for w in weights]
    if len(masks) != len(weights):
        raise ValueError(f"Got {len(masks)} masks for {len(weights)} weights.")
    for weight, mask in zip(weights, masks, strict=True):
        if mask.shape != weight.shape:
            raise ValueError(
                f"A mask of shape {tuple(mask.shape)} does not fit a weight of shape "
                f"{tuple(weight.shape)}."
            )
    return [m.to(device=w.device, dtype=torch.bool) for m, w in zip(masks, weights, strict=True)]


def _keep_largest(scores: Tensor, alive: Tensor, keep: int) -> Tensor:
    """Boolean mask of the ``keep`` largest ``scores`` among ``alive`` (ties: lower index)."""
    ranked = scores.masked_fill(~alive, -1.0)  # magnitudes are >= 0: pruned entries rank last
    order = torch.argsort(ranked, descending=True, stable=True)
    kept = torch.zeros_like(alive)
    kept[order[:keep]] = True
    return kept


def magnitude_masks(
    weights: Sequence[Tensor],
    amount: float | None = None,
    *,
    sparsity: float | None = None,
    masks: Sequence[Tensor] | None = None,
    scope: Scope = "global",
) -> list[Tensor]:
    """Prune the smallest-magnitude surviving weights; return the new boolean masks.

    Give exactly one of ``amount`` (the fraction of the *surviving* weights to remove this round)
    and ``sparsity`` (the fraction of *all* weights that must be pruned afterwards; computing the
    count from the target avoids compounding the rounding over rounds).

    Args:
        weights: the tensors to prune (any shapes).
        amount: fraction of the surviving weights to prune, in [0, 1].
        sparsity: target overall fraction of pruned weights, in [0, 1]; never un-prunes.
        masks: the current masks (``None``: everything survives).
        scope: ``"global"`` ranks all tensors together, ``"layerwise"`` each tensor alone.

    Returns:
        One boolean mask per weight (``True``: survives); each is a subset of its old mask.

    Raises:
        ValueError: both or neither of ``amount``/``sparsity``, a value outside [0, 1], an
            unknown ``scope`` or masks that do not fit the weights.

    Examples:
        >>> import torch
        >>> w = torch.tensor([[0.1, -3.0], [2.0, 0.5]])
        >>> magnitude_masks([w], amount=0.5)[0]
        tensor([[False,  True],
                [ True, False]])

    Note:
        Ties are broken by position (the earlier entry survives), so masks are deterministic. NaN
        magnitudes count as zero.
    """
    if (amount is None) == (sparsity is None):
        raise ValueError("Give exactly one of `amount` and `sparsity`.")
    value, name = (amount, "amount") if amount is not None else (sparsity, "sparsity")
    check_number(name, value, low=0.0, high=1.0)
    assert value is not None
    check_choice("scope", scope, SCOPES)
    current = _check_masks(weights, masks)
    if not weights:
        return []
    groups = (
        [list(range(len(weights)))] if scope == "global" else [[i] for i in range(len(weights))]
    )
    result: list[Tensor] = list(current)
    for group in groups:
        scores = torch.cat([weights[i].detach().abs().flatten().float() for i in group])
        scores = torch.nan_to_num(scores, nan=0.0)
        alive = torch.cat([current[i].flatten() for i in group])
        survivors = int(alive.sum())
        if amount is not None:
            keep = survivors - _round_half_up(amount * survivors)
        else:
            keep = min(survivors, alive.numel() - _round_half_up(value * alive.numel()))
        kept = _keep_largest(scores, alive, keep)
        for i, piece in zip(group, kept.split([weights[i].numel() for i in group]), strict=True):
            result[i] = piece.view(weights[i].shape)
    return result


def target_sparsity(amounts: Iterable[float]) -> float:
    """Overall sparsity after rounds that each prune ``amount`` of the survivors: ``1 - prod(1-a)``.

    Examples:
        >>> round(target_sparsity([0.2] * 10), 4)
        0.8926
    """
    return 1.0 - math.prod(1.0 - a for a in amounts)


@dataclass(frozen=True)
class SparsityReport:
    """Zero counts per tensor and overall.

    Attributes:
        layers: name -> (number of zeros, number of elements).
    """

    layers: dict[str, tuple[int, int]]

    @property
    def zeros(self) -> int:
        return sum(z for z, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.layers.values())

    @property
    def sparsity(self) -> float:
        """Overall fraction of zeros (0 for an empty report)."""
        return self.zeros / self.total if self.total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of zeros of each tensor."""
        return {name: z / n if n else 0.0 for name, (z, n) in self.layers.items()}


def sparsity_report(tensors: Mapping[str, Tensor]) -> SparsityReport:
    """Count the zeros of each tensor: pass weights, or boolean masks (``False`` counts as zero).

    Examples:
        >>> import torch
        >>> report = sparsity_report({"a": torch.tensor([0.0, 1.0]), "b": torch.zeros(2)})
        >>> report.sparsity, report.layer_sparsity()
        (0.75, {'a': 0.5, 'b': 1.0})
    """
    names = list(tensors)
    if not names:
        return SparsityReport({})
    nonzero = torch.stack([torch.count_nonzero(tensors[n].detach()).cpu() for n in names]).tolist()
    return SparsityReport(
        {
            n: (tensors[n].numel() - k, tensors[n].numel())
            for n, k in zip(names, nonzero, strict=True)
        }
    )


def as_multipliers(masks: Sequence[Tensor], like: Sequence[Tensor]) -> list[Tensor]:
    """The masks as 0/1 tensors with each ``like`` tensor's dtype and device."""
    return [m.to(device=t.device, dtype=t.dtype) for m, t in zip(masks, like, strict=True)]


@torch.no_grad()
def apply_masks_(tensors: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """Zero the masked entries of ``tensors`` in place (one ``torch._foreach_mul_`` call).

    ``masks`` should have the tensors' dtype (see :func:`as_multipliers`); boolean masks work too.
    """
    if tensors:
        torch._foreach_mul_(list(tensors), list(masks))


def mask_gradients_(params: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """Zero the masked entries of each parameter's ``.grad`` (skips parameters without one)."""
    pairs = [(p.grad, m) for p, m in zip(params, masks, strict=True) if p.grad is not None]
    apply_masks_([g for g, _ in pairs], [m for _, m in pairs])


def with_wrapped_optimizers(optimizer: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """``optimizer`` and the optimizers it wraps (FrankWolfe steps its ``base`` optimizer), whose
    state must be masked and cleared like its own."""
    found = [optimizer]
    inner = getattr(optimizer, "base", None)
    while isinstance(inner, torch.optim.Optimizer) and inner not in found:
        found.append(inner)
        inner = getattr(inner, "base", None)
    return found


def optimizer_state_tensors(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor], masks: Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """The optimizer-state tensors shaped like each parameter (momentum, moments), with masks."""
    tensors: list[Tensor] = []
    paired: list[Tensor] = []
    states = [o.state for o in with_wrapped_optimizers(optimizer)]
    for param, mask in zip(params, masks, strict=True):
        for value in (v for state in states for v in state.get(param, {}).values()):
            if (
                isinstance(value, Tensor)
                and value.shape == param.shape
                and value.is_floating_point()
            ):
                tensors.append(value)
                paired.append(mask if mask.dtype == value.dtype else mask.to(value.dtype))
    return tensors, paired


def apply_masks_everywhere_(
    params: Sequence[Tensor],
    masks: Sequence[Tensor],
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> None:
    """Zero the masked weights and their optimizer state (momentum, moments) in one foreach call."""
    tensors, paired = list(params), list(masks)
    for optimizer in optimizers:
        state, state_masks = optimizer_state_tensors(optimizer, params, masks)
        tensors += state
        paired += state_masks
    apply_masks_(tensors, paired)


def mask_jaccard(first: Sequence[Tensor], second: Sequence[Tensor]) -> float:
    """Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of the surviving entries of two sets of masks."""
    if not first:
        return 1.0
    a = torch.cat([m.flatten() for m in first])
    b = torch.cat([m.flatten().to(a.device) for m in second])
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def pruned_state_dict(
    model: nn.Module, masks: Mapping[str, Tensor], submodule: str | None = None
) -> dict[str, Tensor]:
    """A plain ``state_dict`` (CPU copies) of ``model`` or of one of its sub-modules, pruned.

    Args:
        model: the model the masks' parameter names refer to.
        masks: qualified parameter name -> boolean mask.
        submodule: dotted attribute path of the sub-module to export (``None``: all of
            ``model``); its keys lose the prefix, so they load into the bare sub-module.

    Returns:
        Tensors only: loadable with ``torch.load(..., weights_only=True)`` without this library.
    """
    check_text("submodule", submodule)
    module = model.get_submodule(submodule) if submodule else model
    prefix = f"{submodule}." if submodule else ""
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    for name, mask in masks.items():
        key = name[len(prefix) :]
        if name.startswith(prefix) and key in state:
            state[key].mul_(mask.cpu())
    return state


@torch.no_grad()
def make_permanent(model: nn.Module, masks: Mapping[str, Tensor] | None = None) -> nn.Module:
    """Make pruning permanent in place: a plain model whose pruned weights are zeros.

    Removes ``torch.nn.utils.prune`` re-parametrisations (``weight_orig``/``weight_mask``, as left
    by Lightning's ``ModelPruning``) and multiplies the parameters named in ``masks`` (qualified
    parameter names, as in ``model.named_parameters()``) by their masks. The result's
    ``state_dict`` has the original keys and loads into a fresh copy of the architecture without
    this library.

    Args:
        model: the pruned model.
        masks: parameter name -> boolean mask (``None``: only remove ``torch`` pruning hooks).

    Returns:
        ``model`` itself.

    Raises:
        KeyError: a name in ``masks`` is not a parameter of ``model``.
    """
    from torch.nn.utils import prune

    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):  # PruningContainer included
                prune.remove(module, hook._tensor_name)
    if masks:
        named = dict(model.named_parameters())
        missing = [name for name in masks if name not in named]
        if missing:
            raise KeyError(f"Not parameters of the model: {', '.join(missing)}.")
        params = [named[name] for name in masks]
        apply_masks_(params, as_multipliers(list(masks.values()), params))
    return model
