"""Problems shared by the optimizer tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Loss = Callable[[], torch.Tensor]


def complex_least_squares(rows: int) -> tuple[tuple[nn.Parameter, Loss], tuple[nn.Parameter, Loss]]:
    """``|A z - b|^2`` on a complex parameter, and the same loss on its ``view_as_real`` twin.

    torch's rule for complex parameters (its Adam follows it) is that an optimizer treats one as
    the pairs of its real and imaginary parts, so both parameters must follow the same path.
    """
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(4, dtype=torch.complex128, generator=generator)
    a = torch.randn(rows, 4, dtype=torch.complex128, generator=generator)
    b = torch.randn(rows, dtype=torch.complex128, generator=generator)
    z = nn.Parameter(start.clone())
    r = nn.Parameter(torch.view_as_real(start).clone())
    return (
        (z, lambda: (a @ z - b).abs().pow(2).sum()),
        (r, lambda: (a @ torch.view_as_complex(r) - b).abs().pow(2).sum()),
    )
