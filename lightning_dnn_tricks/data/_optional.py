"""Import of optional dependencies with an install hint when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from lightning_utilities.core.imports import RequirementCache

from lightning_dnn_tricks.validation import check_text

#: Distribution names of optional modules whose import name differs.
_PACKAGES = {"sklearn": "scikit-learn"}


def require(module_name: str, feature: str, *, extra: str = "examples") -> ModuleType:
    """Import ``module_name``, or raise an ``ImportError`` that says how to install it.

    The check is Lightning's own (``lightning_utilities.core.imports.RequirementCache``, which
    imports the module); only the message is ours, because its hint (``pip install -U
    sklearn.datasets``) names the module, not the package extra that installs it. Like
    Lightning's, the answer is cached for the process: a package installed after a failed
    call is seen after a restart.

    Args:
        module_name: the module to import, e.g. ``"sklearn.datasets"``.
        feature: what needs it, named in the message, e.g. ``"DigitsDataModule"``.
        extra: the package extra that installs it.

    Raises:
        ImportError: the module (or one of its own dependencies) cannot be imported.
        TypeError: an argument is not a string.

    Examples:
        >>> require("math", "the example").sqrt(4.0)
        2.0
    """
    check_text("module_name", module_name, optional=False)
    check_text("feature", feature, optional=False)
    check_text("extra", extra, optional=False)
    if not RequirementCache(module=module_name):
        top_level = module_name.split(".")[0]
        package = _PACKAGES.get(top_level, top_level)
        raise ImportError(
            f"{feature} needs {package}. Install it with: "
            f'pip install "lightning-dnn-tricks[{extra}]" ({module_name!r} cannot be imported)'
        )
    return importlib.import_module(module_name)
