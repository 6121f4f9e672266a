"""MkDocs hooks: pages generated from the code and from benchmark results.

No number on the site is typed by hand. A page asks for generated content with a marker that
stands alone on its line (outside fenced code; its indentation is kept, so markers work inside
admonitions and tabs):

``<!-- ldt:compatibility-matrix -->``
    one row per registered trick (:func:`lightning_dnn_tricks.list_tricks`).
``<!-- ldt:composition-matrix -->``
    the composition matrix decided from the declared effects (``composition.py``).
``<!-- ldt:results NAME -->``
    the table in ``benchmarks/results/NAME.json``, or a "Not measured yet" warning naming the
    command that produces it.
``<!-- ldt:overhead TRICK -->``
    the rows of ``benchmarks/results/overhead.json`` whose trick name contains ``TRICK`` (a
    method card shows its own cost, not the whole table).
``<!-- ldt:verdicts NAME -->``
    the claims' verdicts stored in ``benchmarks/results/NAME.json`` (``verdicts``), as an
    admonition that a method card puts first; a note naming the command when there are none.
``<!-- ldt:figure NAME -->``
    the plot ``docs/assets/results/NAME.png`` when it exists, a one-line note otherwise.
``<!-- ldt:recipes -->``
    the recipes shipped in ``lightning_dnn_tricks/recipes/*.yaml``.
``<!-- ldt:parameters MODULE:CLASS -->``
    the constructor arguments of a class: type, default (read from the signature) and the
    description from its Google-style ``Args:`` section.
``<!-- ldt:api-modules PACKAGE -->``
    one mkdocstrings ``::: PACKAGE.module`` block per public module file of a package, so a new
    method file appears in the API reference without editing it.

The ``render_*`` functions are pure (paths in, markdown out) and tested in
``tests/docs/test_docs_hooks.py``. A malformed results file or an unknown marker stops the build
with a message naming the file; a missing results file does not (a clean clone builds its docs
before any benchmark has run).
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import posixpath
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mkdocs.exceptions import PluginError

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.livereload import LiveReloadServer
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

    from lightning_dnn_tricks.registry import TrickSpec

RESULTS_DIR = "benchmarks/results"  # relative to the repository root
BENCHMARKS_DIR = "benchmarks"
FIGURES_DIR = "assets/results"  # relative to docs_dir
RECIPES_DIR = "lightning_dnn_tricks/recipes"
PACKAGE_DIR = "lightning_dnn_tricks"

# The benchmark JSON schema: required key -> type. "notes" (str) is optional.
RESULT_SCHEMA: dict[str, type] = {
    "benchmark": str,
    "command": str,
    "created": str,
    "machine": str,
    "settings": dict,
    "columns": list,
    "rows": list,
}

MARKER_KINDS = (
    "compatibility-matrix",
    "composition-matrix",
    "results",
    "overhead",
    "verdicts",
    "figure",
    "recipes",
    "parameters",
    "api-modules",
)
_NEEDS_ARGUMENT = {"results", "overhead", "verdicts", "figure", "parameters", "api-modules"}
_MARKER = re.compile(
    r"^(?P<indent>[ \t]*)<!--\s*ldt:(?P<kind>[A-Za-z-]+)(?:\s+(?P<arg>[A-Za-z0-9_.:-]+))?\s*-->"
    r"[ \t]*$"
)
_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)")


# --------------------------------------------------------------------------- cells and tables


def escape_cell(text: str) -> str:
    """Make ``text`` safe inside a markdown table cell: one line, pipes escaped.

    Pipes inside code spans are left alone: the tables extension does not split cells there, and
    an escape would show as a literal backslash.
    """
    text = " ".join(text.split())
    parts: list[str] = []
    position = 0
    for span in _CODE_SPAN.finditer(text):
        parts += [text[position : span.start()].replace("|", "\\|"), span.group(0)]
        position = span.end()
    parts.append(text[position:].replace("|", "\\|"))
    return "".join(parts)


def inline_code(text: str) -> str:
    """``text`` as inline code, with enough backticks to hold backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def format_number(value: float) -> str:
    """A float with 4 significant digits; integers-sized values >= 10^4 without exponent."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if 1e4 <= abs(value) < 1e15:
        return f"{value:.0f}"
    return f"{value:.4g}"


def format_cell(value: Any) -> str:
    """One JSON value as a table cell: floats rounded, ``null`` as a dash, booleans as yes/no."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, str):
        return escape_cell(value)
    return escape_cell(json.dumps(value, sort_keys=True))


def _is_numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def markdown_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], right_align: Sequence[bool] = ()
) -> str:
    """A markdown table from already formatted cells."""
    align = list(right_align) or [False] * len(columns)
    header = "| " + " | ".join(escape_cell(column) for column in columns) + " |"
    rule = "| " + " | ".join("---:" if right else "---" for right in align) + " |"
    body = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def admonition(kind: str, title: str, body: str) -> str:
    """A material admonition (``!!! kind "title"``) with ``body`` indented under it."""
    lines = [f'!!! {kind} "{title}"', ""]
    lines += [f"    {line}" if line else "" for line in body.splitlines()]
    return "\n".join(lines)


# --------------------------------------------------------------------- compatibility matrix


def matrix_columns() -> list[str]:
    """The columns of the compatibility matrix: identity, then ``Capabilities.as_row()``."""
    from lightning_dnn_tricks.registry import Capabilities

    return ["trick", "class", "kind", "summary", "reconstruction", *Capabilities().as_row()]


def render_compatibility_matrix(specs: Sequence[TrickSpec], page_dir: str = "") -> str:
    """The compatibility matrix of ``specs``, with links relative to the page in ``page_dir``.

    ``page_dir`` is the directory of the page (relative to ``docs_dir``) that shows the table; a
    trick's name links to its ``docs_page`` when that is set.
    """
    if not specs:
        return admonition("info", "No tricks registered", "The registry is empty.")
    columns = matrix_columns()
    rows = []
    for spec in specs:
        name = inline_code(spec.name)
        if spec.docs_page:
            target = posixpath.relpath(spec.docs_page, page_dir or ".")
            name = f"[{name}]({target})"
        class_name = spec.import_path.partition(":")[2] or spec.import_path
        capabilities = spec.capabilities.as_row()
        rows.append(
            [
                name,
                inline_code(class_name),
                escape_cell(spec.kind),
                escape_cell(spec.summary),
                "yes" if spec.reconstruction else "no",
                *(escape_cell(capabilities[column]) for column in columns[5:]),
            ]
        )
    return markdown_table(columns, rows)


def render_composition_matrix(repo_root: Path) -> str:
    """Trick x (trick, Lightning callback): ``ok`` or ``refused``, then each refusal's reason."""
    registered_tricks(repo_root)  # puts the package on the path
    from lightning_dnn_tricks.composition import composition_pairs, conflict

    pairs = composition_pairs()
    tricks = sorted({a.name for a, _ in pairs})
    others = [*tricks, *sorted({b.name for _, b in pairs} - set(tricks))]
    status: dict[tuple[str, str], str | None] = {}
    for a, b in pairs:
        status[(a.name, b.name)] = status[(b.name, a.name)] = conflict(a, b)
    rows = [
        [inline_code(t), *("refused" if status[(t, o)] else "ok" for o in others)] for t in tricks
    ]
    table = markdown_table(["trick", *others], rows)
    reasons = sorted({message for message in status.values() if message is not None}, key=str.lower)
    listing = "\n".join(f"- {escape_cell(message)}" for message in reasons)
    supported = sum(conflict(a, b) is None for a, b in pairs)
    summary = (
        f"{len(pairs)} pairs: {supported} supported (both effects tested), "
        f"{len(pairs) - supported} refused at setup."
    )
    return f"{summary}\n\n{table}\n\nThe refusals, as the error says them:\n\n{listing}"


def registered_tricks(repo_root: Path) -> list[TrickSpec]:
    """``list_tricks()`` of the package in ``repo_root`` (imports Lightning: a few seconds)."""
    root = str(repo_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    from lightning_dnn_tricks import list_tricks

    return list_tricks()


# ------------------------------------------------------------------------- benchmark results


def load_results(path: Path) -> dict[str, Any]:
    """Read and validate one benchmark result file; ``ValueError`` names the file and the fault."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    for key, expected in RESULT_SCHEMA.items():
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r} (required: {', '.join(RESULT_SCHEMA)}).")
        if not isinstance(data[key], expected):
            raise ValueError(
                f"{path}: {key!r} must be a JSON {expected.__name__}, "
                f"got {type(data[key]).__name__}."
            )
    if "notes" in data and not isinstance(data["notes"], str):
        raise ValueError(f"{path}: 'notes' must be a string.")
    try:
        datetime.fromisoformat(data["created"].replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{path}: 'created' must be an ISO date, got {data['created']!r}."
        ) from None
    columns = data["columns"]
    if not columns or not all(isinstance(column, str) for column in columns):
        raise ValueError(f"{path}: 'columns' must be a non-empty list of strings.")
    if not data["rows"]:
        raise ValueError(f"{path}: 'rows' is empty.")
    for index, row in enumerate(data["rows"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ValueError(
                f"{path}: row {index} must be a list of {len(columns)} cells (one per column), "
                f"got {row!r}."
            )
    return data


def format_created(created: str) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM UTC`` (a bare date is kept as it is)."""
    moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    if "T" not in created and " " not in created.strip():
        return created
    if moment.tzinfo is not None:
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M")


def producing_command(name: str, repo_root: Path) -> str:
    """The command that writes ``benchmarks/results/NAME.json``."""
    script = repo_root / BENCHMARKS_DIR / f"{name}.py"
    if script.is_file():
        return f"python {BENCHMARKS_DIR}/{name}.py"
    return "make bench"


def render_results(
    name: str, repo_root: Path, keep: Callable[[Mapping[str, Any]], bool] | None = None
) -> str:
    """The table of ``benchmarks/results/NAME.json`` with its provenance, or a warning.

    ``keep`` (a row as ``{column: cell}`` in, keep or not out) selects the rows shown; selecting
    none is an error naming the file.
    """
    if not _NAME.match(name):
        raise ValueError(f"Invalid results name {name!r}: use letters, digits, '_', '-', '.'.")
    path = repo_root / RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        command = producing_command(name, repo_root)
        return admonition(
            "warning",
            "Not measured yet",
            f"{inline_code(f'{RESULTS_DIR}/{name}.json')} does not exist yet, so there are no "
            f"numbers to show. Run {inline_code(command)} (`make bench` runs every benchmark), "
            "then rebuild the docs.",
        )
    data = load_results(path)
    rows: list[list[Any]] = data["rows"]
    if keep is not None:
        rows = [row for row in rows if keep(dict(zip(data["columns"], row, strict=True)))]
        if not rows:
            raise ValueError(f"{path}: no row matches the marker's selection.")
    right_align = [
        all(_is_numeric(row[i]) or row[i] is None for row in rows)
        and any(_is_numeric(row[i]) for row in rows)
        for i in range(len(data["columns"]))
    ]
    table = markdown_table(
        data["columns"], [[format_cell(cell) for cell in row] for row in rows], right_align
    )
    parts = [
        table,
        f"Measured by {inline_code(data['command'])} on {escape_cell(data['machine'])}, "
        f"{format_created(data['created'])}.",
    ]
    if data.get("notes"):
        parts.append(data["notes"].strip())
    if data["settings"]:
        settings = json.dumps(data["settings"], indent=2, sort_keys=True)
        details = [f'??? note "Settings of `{escape_cell(data["benchmark"])}`"', "", "    ```json"]
        details += [f"    {line}" for line in settings.splitlines()]
        details.append("    ```")
        parts.append("\n".join(details))
    return "\n\n".join(parts)


def render_verdicts(name: str, repo_root: Path) -> str:
    """The verdicts of ``benchmarks/results/NAME.json`` as one admonition, or a note."""
    if not _NAME.match(name):
        raise ValueError(f"Invalid results name {name!r}: use letters, digits, '_', '-', '.'.")
    path = repo_root / RESULTS_DIR / f"{name}.json"
    verdicts = load_results(path).get("verdicts") if path.is_file() else None
    if not verdicts:
        command = producing_command(name, repo_root)
        return admonition(
            "warning",
            "No verdict yet",
            f"{inline_code(f'{RESULTS_DIR}/{name}.json')} holds no verdict: run "
            f"{inline_code(command)} on Fashion-MNIST, then rebuild the docs.",
        )
    if not isinstance(verdicts, list) or not all(isinstance(v, dict) for v in verdicts):
        raise ValueError(f"{path}: 'verdicts' must be a list of objects.")
    rows = []
    for verdict in verdicts:
        try:
            seeds = len(verdict["seeds"])
            rows.append([
                f"**{verdict['verdict']}**", escape_cell(verdict["claim"]),
                escape_cell(verdict["metric"]),
                f"{format_number(verdict['arm_mean'])} ± {format_number(verdict['arm_std'])}",
                f"{format_number(verdict['baseline_mean'])} ± "
                f"{format_number(verdict['baseline_std'])} ({escape_cell(verdict['baseline'])})",
                f"{verdict['difference']:+.4f} [{verdict['low']:+.4f}, {verdict['high']:+.4f}]",
                str(seeds),
            ])  # fmt: skip
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: malformed verdict {verdict!r} ({error}).") from None
    columns = ["verdict", "claim", "metric", "trick", "baseline", "paired Δ [95% CI]", "seeds"]
    found = {verdict["verdict"] for verdict in verdicts}
    kind = "success" if found == {"supported"} else "info"
    table = markdown_table(columns, rows, [False] * 5 + [True, True])
    data = load_results(path)
    provenance = (
        f"Measured by {inline_code(data['command'])}, {format_created(data['created'])}; "
        "the interval is the 95% Student-t interval of the per-seed difference, and a verdict is "
        "*supported* when it lies wholly on the claim's side, *not supported* when wholly on the "
        "other, *inconclusive* otherwise."
    )
    return admonition(kind, "Verdict on Fashion-MNIST", f"{table}\n\n{provenance}")


def render_figure(name: str, docs_dir: Path, page_dir: str = "") -> str:
    """Image markdown for ``docs/assets/results/NAME.png`` relative to the page, or a note."""
    if not _NAME.match(name):
        raise ValueError(f"Invalid figure name {name!r}: use letters, digits, '_', '-', '.'.")
    relative = f"{FIGURES_DIR}/{name}.png"
    if not (docs_dir / relative).is_file():
        return (
            f"*No plot yet: the benchmark writes {inline_code(f'docs/{relative}')} when it runs.*"
        )
    target = posixpath.relpath(relative, page_dir or ".")
    return f"![Benchmark plot: {name}]({target})"


# ---------------------------------------------------------------------------------- recipes


def recipe_description(path: Path) -> str:
    """The first non-empty comment line of a YAML recipe (without ``#``), or ``""``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if text:
                return text
    return ""


def render_recipes(recipes_dir: Path) -> str:
    """A table of the ``*.yaml`` recipes in ``recipes_dir``: name, description and command."""
    paths = sorted(recipes_dir.glob("*.yaml")) if recipes_dir.is_dir() else []
    if not paths:
        return admonition(
            "info",
            "No recipes yet",
            f"There is no recipe in {inline_code(RECIPES_DIR + '/')} in this version.",
        )
    rows = [
        [
            inline_code(path.stem),
            escape_cell(recipe_description(path)) or "–",
            inline_code(f"ldt fit -c recipes/{path.name}"),
        ]
        for path in paths
    ]
    return markdown_table(["recipe", "description", "command"], rows)


# ------------------------------------------------------------------------------- parameters


def docstring_arguments(obj: object) -> dict[str, str]:
    """The ``Args:`` entries of a Google-style docstring, continuation lines joined."""
    doc = inspect.getdoc(obj) or ""
    arguments: dict[str, str] = {}
    inside = False
    current: str | None = None
    base_indent = 0
    for line in doc.splitlines():
        if not inside:
            inside = line.strip() in ("Args:", "Arguments:", "Parameters:")
            continue
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break
        entry = re.match(r"^\s*(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if entry and (current is None or indent <= base_indent):
            base_indent = indent
            current = entry.group(1).lstrip("*")
            arguments[current] = entry.group(2).strip()
        elif current is not None:
            arguments[current] = f"{arguments[current]} {line.strip()}".strip()
    return arguments


def format_default(value: Any) -> str:
    """A default value as Python-like source: classes by name, sequences element-wise."""
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, tuple | list):
        inner = ", ".join(format_default(item) for item in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _format_annotation(annotation: Any, resolved: Any) -> str:
    if typing.get_origin(resolved) is typing.Literal:
        return " | ".join(format_default(arg) for arg in typing.get_args(resolved))
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", repr(annotation))


def render_parameters(cls: type) -> str:
    """A table of ``cls``'s constructor arguments: name, type, default and description."""
    init = inspect.getattr_static(cls, "__init__")
    signature = inspect.signature(init)
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolved forward references: fall back to the annotation strings
        hints = {}
    descriptions = docstring_arguments(cls)
    rows = []
    for name, parameter in signature.parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = _format_annotation(parameter.annotation, hints.get(name))
        default = (
            "required"
            if parameter.default is inspect.Parameter.empty
            else inline_code(format_default(parameter.default))
        )
        rows.append(
            [
                inline_code(name),
                inline_code(annotation) if annotation else "",
                default,
                escape_cell(descriptions.get(name, "")),
            ]
        )
    return markdown_table(["argument", "type", "default", "description"], rows)


def import_object(path: str, repo_root: Path) -> type:
    """The class named by ``"package.module:Class"``."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        raise ValueError(f"Expected 'module:Class', got {path!r}.")
    root = str(repo_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    obj = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(obj, type):
        raise ValueError(f"{path} is not a class.")
    return obj


# ------------------------------------------------------------------------------ API modules


def render_api_modules(package: str, repo_root: Path, heading_level: int = 3) -> str:
    """mkdocstrings blocks for every public module file (``*.py``, not ``_*``) of ``package``."""
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", package):
        raise ValueError(f"Invalid package name {package!r}.")
    folder = repo_root.joinpath(*package.split("."))
    if not (folder / "__init__.py").is_file():
        raise ValueError(f"{package} is not a package under {repo_root}.")
    modules = sorted(path.stem for path in folder.glob("*.py") if not path.stem.startswith("_"))
    blocks = [
        f"::: {package}.{module}\n    options:\n      show_root_heading: true\n"
        f"      heading_level: {heading_level}"
        for module in modules
    ]
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------- markers


def _indent(text: str, prefix: str) -> list[str]:
    return [f"{prefix}{line}" if line.strip() else "" for line in text.splitlines()]


def expand_markers(markdown: str, render: Callable[[str, str | None], str]) -> str:
    """Replace each marker line outside fenced code with ``render(kind, argument)``.

    The replacement keeps the marker's indentation and is surrounded by blank lines, so tables
    and admonitions start a new block.
    """
    out: list[str] = []
    fence: str | None = None
    for line in markdown.split("\n"):
        if fence is not None:
            closing = re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", line)
            if closing:
                fence = None
            out.append(line)
            continue
        opening = _FENCE.match(line)
        if opening:
            fence = opening.group("fence")
            out.append(line)
            continue
        marker = _MARKER.match(line)
        if marker is None:
            out.append(line)
            continue
        kind, argument = marker.group("kind"), marker.group("arg")
        if kind not in MARKER_KINDS:
            raise ValueError(f"Unknown marker 'ldt:{kind}' (known: {', '.join(MARKER_KINDS)}).")
        if (kind in _NEEDS_ARGUMENT) != (argument is not None):
            expected = "needs an argument" if kind in _NEEDS_ARGUMENT else "takes no argument"
            raise ValueError(f"Marker 'ldt:{kind}' {expected}: {line.strip()!r}.")
        out += ["", *_indent(render(kind, argument), marker.group("indent")), ""]
    return "\n".join(out)


def render_marker(
    kind: str,
    argument: str | None,
    *,
    repo_root: Path,
    docs_dir: Path,
    page_dir: str,
    specs: Callable[[], Sequence[TrickSpec]] | None = None,
) -> str:
    """The markdown that replaces one marker (see the module docstring)."""
    if kind == "compatibility-matrix":
        trick_specs = specs() if specs is not None else registered_tricks(repo_root)
        return render_compatibility_matrix(trick_specs, page_dir)
    if kind == "composition-matrix":
        return render_composition_matrix(repo_root)
    if kind == "recipes":
        return render_recipes(repo_root / RECIPES_DIR)
    assert argument is not None  # checked by expand_markers
    if kind == "results":
        return render_results(argument, repo_root)
    if kind == "verdicts":
        return render_verdicts(argument, repo_root)
    if kind == "overhead":
        return render_results(
            "overhead", repo_root, keep=lambda row: argument in str(row.get("trick", ""))
        )
    if kind == "figure":
        return render_figure(argument, docs_dir, page_dir)
    if kind == "parameters":
        return render_parameters(import_object(argument, repo_root))
    if kind == "api-modules":
        return render_api_modules(argument, repo_root)
    raise ValueError(f"Unknown marker 'ldt:{kind}'.")


def _paths(config: Mapping[str, Any]) -> tuple[Path, Path]:
    docs_dir = Path(config["docs_dir"]).resolve()
    return docs_dir.parent, docs_dir


# ------------------------------------------------------------------------------ mkdocs hooks


def on_page_markdown(
    markdown: str, *, page: Page, config: MkDocsConfig, files: Files, **kwargs: Any
) -> str:
    """Expand the ``ldt:`` markers of one page."""
    repo_root, docs_dir = _paths(config)
    page_dir = posixpath.dirname(page.file.src_uri)

    def render(kind: str, argument: str | None) -> str:
        return render_marker(
            kind, argument, repo_root=repo_root, docs_dir=docs_dir, page_dir=page_dir
        )

    try:
        return expand_markers(markdown, render)
    except (ValueError, OSError, ImportError, AttributeError) as error:
        raise PluginError(f"docs/hooks.py, page {page.file.src_uri}: {error}") from error


def on_serve(
    server: LiveReloadServer, *, config: MkDocsConfig, builder: Callable[..., Any], **kwargs: Any
) -> LiveReloadServer:
    """Rebuild on changes to benchmark results, recipes and the package (``mkdocs serve``)."""
    repo_root, _ = _paths(config)
    for relative in (RESULTS_DIR, RECIPES_DIR, PACKAGE_DIR):
        path = repo_root / relative
        if path.exists():
            server.watch(str(path))
    return server
