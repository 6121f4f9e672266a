"""Tests of the docs' generated content (``docs/hooks.py``, ``docs/griffe_docstrings.py``).

Fast on purpose: nothing here imports torch or Lightning (the registry module is pure Python), so
the real matrix is exercised by the strict docs build instead.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Literal

import pytest

from lightning_dnn_tricks.registry import Capabilities, TrickSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS_DIR = REPO_ROOT / "docs"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


hooks = _load("ldt_docs_hooks", DOCS_DIR / "hooks.py")
griffe_docstrings = _load("ldt_docs_griffe_docstrings", DOCS_DIR / "griffe_docstrings.py")


def _result(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "benchmark": "toy_claim",
        "command": "python benchmarks/toy_claim.py --seeds 3",
        "created": "2025-01-31T12:34:56+00:00",
        "machine": "Linux x86_64, 16 CPUs, torch 2.5",
        "settings": {"epochs": 3, "seeds": [0, 1, 2]},
        "columns": ["method", "accuracy", "steps", "converged", "note"],
        "rows": [
            ["norm_loss", 0.912345678, 1200, True, "a|b"],
            ["weight_decay", 12345.678, 1200, False, None],
        ],
        "notes": "Mean over 3 seeds.",
    }
    data.update(overrides)
    return data


def _write_result(root: Path, name: str, data: dict[str, Any]) -> Path:
    path = root / "benchmarks" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- matrix


SPECS = [
    TrickSpec(
        name="norm_loss",
        kind="callback",
        import_path="lightning_dnn_tricks.callbacks.norm_loss:NormLoss",
        summary="Unit-norm filters | replaces weight decay.",
        paper="Georgiou et al.",
        capabilities=Capabilities(manual_optimization=True),
        docs_page="methods/norm_loss.md",
    ),
    TrickSpec(
        name="sgd_g2",
        kind="optimizer",
        import_path="lightning_dnn_tricks.optim.sgd_g2:SGDG2",
        summary="Adaptive step size.",
        paper="Ayadi and Turinici",
        capabilities=Capabilities(
            needs_closure=True, gradient_evaluations_per_step=2, precisions=("32-true",)
        ),
        reconstruction=True,
    ),
]


def test_matrix_has_one_row_per_trick_and_the_capability_columns() -> None:
    table = hooks.render_compatibility_matrix(SPECS)
    lines = table.splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:5] == ["trick", "class", "kind", "summary", "reconstruction"]
    assert header[5:] == list(Capabilities().as_row())
    assert len(lines) == 2 + len(SPECS)
    norm_loss_row, sgd_row = lines[2], lines[3]
    assert "[`norm_loss`](methods/norm_loss.md)" in norm_loss_row
    assert "`NormLoss`" in norm_loss_row
    assert "Unit-norm filters \\| replaces weight decay." in norm_loss_row
    assert "| required | 2 |" in sgd_row
    assert "| 32-true |" in sgd_row
    assert "(" not in sgd_row.split("|")[1]  # no docs_page: no link
    assert sgd_row.split("|")[5].strip() == "yes"  # reconstruction flag


def test_matrix_links_are_relative_to_the_page() -> None:
    table = hooks.render_compatibility_matrix(SPECS[:1], page_dir="methods")
    assert "[`norm_loss`](norm_loss.md)" in table
    table = hooks.render_compatibility_matrix(SPECS[:1], page_dir="guides/deep")
    assert "[`norm_loss`](../../methods/norm_loss.md)" in table


def test_matrix_marker_uses_the_given_registry() -> None:
    page = "# Tricks\n\n<!-- ldt:compatibility-matrix -->\n"
    out = hooks.expand_markers(
        page,
        lambda kind, arg: hooks.render_marker(
            kind, arg, repo_root=REPO_ROOT, docs_dir=DOCS_DIR, page_dir="", specs=lambda: SPECS
        ),
    )
    assert "<!-- ldt:" not in out
    assert "[`norm_loss`](methods/norm_loss.md)" in out


# ------------------------------------------------------------------------------------ results


def test_results_table_from_json(tmp_path: Path) -> None:
    _write_result(tmp_path, "toy_claim", _result())
    out = hooks.render_results("toy_claim", tmp_path)
    assert "| method | accuracy | steps | converged | note |" in out
    assert "| --- | ---: | ---: | --- | --- |" in out
    assert "| norm_loss | 0.9123 | 1200 | yes | a\\|b |" in out
    assert "| weight_decay | 12346 | 1200 | no | – |" in out
    assert (
        "Measured by `python benchmarks/toy_claim.py --seeds 3` on "
        "Linux x86_64, 16 CPUs, torch 2.5, 2025-01-31 12:34 UTC." in out
    )
    assert "Mean over 3 seeds." in out
    assert '??? note "Settings of `toy_claim`"' in out
    assert '    "epochs": 3,' in out
    assert "Not measured yet" not in out


def test_results_without_notes_or_settings(tmp_path: Path) -> None:
    data = _result(settings={}, created="2025-01-31")
    del data["notes"]
    _write_result(tmp_path, "toy_claim", data)
    out = hooks.render_results("toy_claim", tmp_path)
    assert out.rstrip().endswith("2025-01-31.")
    assert "???" not in out


def test_missing_results_give_a_warning_and_no_numbers(tmp_path: Path) -> None:
    out = hooks.render_results("norm_loss_claim", tmp_path)
    assert out.startswith('!!! warning "Not measured yet"')
    assert "`benchmarks/results/norm_loss_claim.json` does not exist" in out
    assert "`make bench`" in out
    assert "|" not in out
    script = tmp_path / "benchmarks" / "norm_loss_claim.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    assert "`python benchmarks/norm_loss_claim.py`" in hooks.render_results(
        "norm_loss_claim", tmp_path
    )


def _verdict(verdict: str = "supported", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "claim": "Norm Loss is competitive with weight decay",
        "metric": "test accuracy",
        "arm": "norm_loss",
        "baseline": "weight decay",
        "claim_kind": "not_worse",
        "seeds": [0, 1, 2],
        "arm_mean": 0.9012,
        "arm_std": 0.0021,
        "baseline_mean": 0.8995,
        "baseline_std": 0.0034,
        "difference": 0.0017,
        "low": -0.0031,
        "high": 0.0065,
        "margin": 0.01,
        "verdict": verdict,
    }
    data.update(overrides)
    return data


def test_verdicts_lead_with_an_admonition(tmp_path: Path) -> None:
    _write_result(tmp_path, "toy_claim", _result(verdicts=[_verdict()]))
    out = hooks.expand_markers(
        "<!-- ldt:verdicts toy_claim -->",
        lambda kind, arg: hooks.render_marker(
            kind, arg, repo_root=tmp_path, docs_dir=tmp_path, page_dir=""
        ),
    ).strip()
    assert out.startswith('!!! success "Verdict on Fashion-MNIST"')
    assert "| **supported** | Norm Loss is competitive with weight decay | test accuracy |" in out
    assert (
        "0.9012 ± 0.0021 | 0.8995 ± 0.0034 (weight decay) | +0.0017 [-0.0031, +0.0065] | 3 |" in out
    )
    assert "`python benchmarks/toy_claim.py --seeds 3`" in out
    mixed = [_verdict(), _verdict("inconclusive", claim="second")]
    _write_result(tmp_path, "toy_claim", _result(verdicts=mixed))
    out = hooks.render_verdicts("toy_claim", tmp_path)
    assert out.startswith('!!! info "Verdict on Fashion-MNIST"') and "**inconclusive**" in out


def test_no_verdict_gives_a_warning_naming_the_command(tmp_path: Path) -> None:
    assert "No verdict yet" in hooks.render_verdicts("toy_claim", tmp_path)
    _write_result(tmp_path, "toy_claim", _result())  # an old file, written before verdicts
    out = hooks.render_verdicts("toy_claim", tmp_path)
    assert out.startswith('!!! warning "No verdict yet"') and "|" not in out


@pytest.mark.parametrize("verdicts", [[{"claim": "no numbers"}], ["text"], {"a": 1}])
def test_malformed_verdicts_fail_loudly(tmp_path: Path, verdicts: Any) -> None:
    path = _write_result(tmp_path, "toy_claim", _result(verdicts=verdicts))
    with pytest.raises(ValueError, match="verdict") as error:
        hooks.render_verdicts("toy_claim", tmp_path)
    assert str(path) in str(error.value)


def test_overhead_marker_shows_only_the_tricks_rows(tmp_path: Path) -> None:
    overhead = _result(
        columns=["trick", "ratio"],
        rows=[["norm_loss", 1.03], ["bnsr", 1.34], ["bnsr (compiled)", 1.21]],
    )
    _write_result(tmp_path, "overhead", overhead)

    def render(argument: str) -> str:
        page = f"<!-- ldt:overhead {argument} -->"
        return hooks.expand_markers(
            page,
            lambda kind, arg: hooks.render_marker(
                kind, arg, repo_root=tmp_path, docs_dir=tmp_path, page_dir=""
            ),
        )

    out = render("bnsr")
    assert "| bnsr | 1.34 |" in out and "| bnsr (compiled) | 1.21 |" in out
    assert "norm_loss" not in out
    with pytest.raises(ValueError, match="no row matches"):
        render("frank_wolfe")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": None}, "'command' must be"),
        ({"rows": [["only one cell"]]}, "row 0 must be a list of 5 cells"),
        ({"rows": []}, "'rows' is empty"),
        ({"columns": []}, "'columns' must be a non-empty list"),
        ({"created": "yesterday"}, "'created' must be an ISO date"),
        ({"notes": 3}, "'notes' must be a string"),
    ],
)
def test_malformed_results_fail_loudly(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = _write_result(tmp_path, "toy_claim", _result(**change))
    with pytest.raises(ValueError, match=message) as error:
        hooks.render_results("toy_claim", tmp_path)
    assert str(path) in str(error.value)


def test_missing_key_is_named(tmp_path: Path) -> None:
    data = _result()
    del data["machine"]
    _write_result(tmp_path, "toy_claim", data)
    with pytest.raises(ValueError, match="missing key 'machine'"):
        hooks.render_results("toy_claim", tmp_path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (0.123456, "0.1235"),
        (1.0, "1"),
        (3.14159, "3.142"),
        (0.000123456, "0.0001235"),
        (1.23e-7, "1.23e-07"),
        (1234.5678, "1235"),
        (123456.7, "123457"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
    ],
)
def test_number_format(value: float, expected: str) -> None:
    assert hooks.format_number(value) == expected


# ------------------------------------------------------------------------------------- figures


def test_figure_only_when_the_png_exists(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    missing = hooks.render_figure("toy_claim", docs, page_dir="methods")
    assert "![" not in missing
    assert "docs/assets/results/toy_claim.png" in missing
    png = docs / "assets" / "results" / "toy_claim.png"
    png.parent.mkdir(parents=True)
    png.write_bytes(b"\x89PNG\r\n")
    assert (
        hooks.render_figure("toy_claim", docs, page_dir="methods")
        == "![Benchmark plot: toy_claim](../assets/results/toy_claim.png)"
    )
    assert "(assets/results/toy_claim.png)" in hooks.render_figure("toy_claim", docs)


# ------------------------------------------------------------------------------------- recipes


def test_recipes_table_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "b_recipe.yaml").write_text("# Second | recipe.\n# More.\ntrainer: {}\n")
    (tmp_path / "a_recipe.yaml").write_text("\n#\n#   First recipe.  \nmodel: {}\n")
    (tmp_path / "plain.yaml").write_text("trainer: {}\n")
    (tmp_path / "notes.txt").write_text("# not a recipe\n")
    lines = hooks.render_recipes(tmp_path).splitlines()
    assert lines[0] == "| recipe | description | command |"
    assert lines[2:] == [
        "| `a_recipe` | First recipe. | `ldt fit -c recipes/a_recipe.yaml` |",
        "| `b_recipe` | Second \\| recipe. | `ldt fit -c recipes/b_recipe.yaml` |",
        "| `plain` | – | `ldt fit -c recipes/plain.yaml` |",
    ]


def test_no_recipes_gives_a_note(tmp_path: Path) -> None:
    assert hooks.render_recipes(tmp_path / "missing").startswith('!!! info "No recipes yet"')


# ---------------------------------------------------------------------------------- parameters


class _Toy:
    """A toy.

    Args:
        strength: the factor (> 0),
            continued on a second line.
        mode: ``"a"`` or ``"b"``.
        layers: classes: with a colon.

    Example:
        >>> isinstance(_Toy(1.0), _Toy)
        True
    """

    def __init__(
        self,
        strength: float,
        mode: Literal["a", "b"] = "a",
        layers: tuple[type, ...] = (int, str),
        *args: Any,
        **kwargs: Any,
    ) -> None:
        del strength, mode, layers, args, kwargs


def test_parameters_table_from_signature_and_docstring() -> None:
    lines = hooks.render_parameters(_Toy).splitlines()
    assert lines[0] == "| argument | type | default | description |"
    assert lines[2:] == [
        "| `strength` | `float` | required | the factor (> 0), continued on a second line. |",
        '| `mode` | `"a" | "b"` | `"a"` | ``"a"`` or ``"b"``. |',
        "| `layers` | `tuple[type, ...]` | `(int, str)` | classes: with a colon. |",
    ]


# ------------------------------------------------------------------------------------ markers


def test_markers_outside_code_are_expanded_with_their_indentation() -> None:
    page = "\n".join(
        [
            "Text with an inline `<!-- ldt:recipes -->` mention.",
            "",
            '!!! note "Inside"',
            "    <!-- ldt:results toy -->",
            "",
            "````markdown",
            "<!-- ldt:results not_me -->",
            "```",
            "<!-- ldt:results still_not_me -->",
            "````",
        ]
    )
    calls: list[tuple[str, str | None]] = []

    def render(kind: str, argument: str | None) -> str:
        calls.append((kind, argument))
        return "| a |\n| --- |\n| 1 |"

    out = hooks.expand_markers(page, render)
    assert calls == [("results", "toy")]
    assert "    | a |\n    | --- |\n    | 1 |" in out
    assert "<!-- ldt:results not_me -->" in out
    assert "<!-- ldt:results still_not_me -->" in out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("<!-- ldt:resuls toy -->", "Unknown marker"),
        ("<!-- ldt:results -->", "needs an argument"),
        ("<!-- ldt:recipes extra -->", "takes no argument"),
    ],
)
def test_bad_markers_fail(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hooks.expand_markers(line, lambda kind, arg: "")


def test_page_hook_expands_results_and_figures(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    _write_result(tmp_path, "toy_claim", _result())
    page = SimpleNamespace(file=SimpleNamespace(src_uri="methods/toy.md"))
    markdown = "# Toy\n\n<!-- ldt:results toy_claim -->\n\n<!-- ldt:figure toy_claim -->\n"
    out = hooks.on_page_markdown(markdown, page=page, config={"docs_dir": str(docs)}, files=None)
    assert "| norm_loss | 0.9123 |" in out
    assert "No plot yet" in out


def test_page_hook_names_the_page_on_errors(tmp_path: Path) -> None:
    from mkdocs.exceptions import PluginError

    (tmp_path / "docs").mkdir()
    _write_result(tmp_path, "toy_claim", {"benchmark": "toy_claim"})
    page = SimpleNamespace(file=SimpleNamespace(src_uri="methods/toy.md"))
    with pytest.raises(PluginError, match=r"methods/toy\.md.*missing key 'command'"):
        hooks.on_page_markdown(
            "<!-- ldt:results toy_claim -->",
            page=page,
            config={"docs_dir": str(tmp_path / "docs")},
            files=None,
        )


def test_api_modules_lists_public_module_files(tmp_path: Path) -> None:
    package = tmp_path / "pkg" / "sub"
    package.mkdir(parents=True)
    for name in ("__init__.py", "_private.py", "beta.py", "alpha.py", "data.txt"):
        (package / name).write_text("")
    out = hooks.render_api_modules("pkg.sub", tmp_path)
    assert out.startswith("::: pkg.sub.alpha\n    options:\n")
    assert "::: pkg.sub.beta" in out
    assert "_private" not in out
    with pytest.raises(ValueError, match="not a package"):
        hooks.render_api_modules("pkg.missing", tmp_path)


def test_every_marker_in_the_docs_is_well_formed() -> None:
    pages = sorted(DOCS_DIR.rglob("*.md"))
    assert pages
    for page in pages:
        hooks.expand_markers(page.read_text(encoding="utf-8"), lambda kind, arg: "")


# ------------------------------------------------------------------------- griffe extension


def test_griffe_extension_rewrites_sphinx_habits() -> None:
    text = "\n".join(
        [
            "Summary with :func:`norm_loss` and :class:`~lightning_dnn_tricks.TrickWarning`.",
            "",
            "A conv weight has C_out rows (one per filter)::",
            "",
            "    L = sum(...)",
            "",
            "Usage::",
            "",
            "    ldt list",
            "",
            "Example:",
            "    >>> 1 + 1",
            "    2",
        ]
    )
    out = griffe_docstrings.rewrite_docstring(text).splitlines()
    assert out[0] == "Summary with `norm_loss` and `TrickWarning`."
    assert out[2] == "A conv weight has C_out rows (one per filter):"
    assert out[6] == "Usage::"  # "Usage:" would read as a section heading
    assert out[10] == "Examples:"
