"""The docs' fenced code blocks fit the page and are spelled so that both tools read them.

- No code line is wider than 88 characters: the Material theme shows about that many monospace
  characters at 1280 px before it clips the line behind a horizontal scroll. Prose wraps, so it
  is not checked.
- The Python blocks are run by pytest-markdown-docs (``--markdown-docs
  --markdown-docs-syntax=superfences``). A block that cannot run on its own is fenced as
  ``{.python notest reason="..."}``: Python-Markdown's superfences renders that brace form as
  Python, whereas the plugin's default spelling ``python notest`` turns the whole block into
  inline text on the page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
MAX_WIDTH = 88

# CommonMark: up to three spaces of indentation outside a container; list items and admonitions
# indent further, so any indentation is accepted. A backtick fence's info string has no backtick.
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_PYTHON = {"python", "py", "python3"}
# The brace form of a skipped block: {.python notest reason="why, in words"}
_NOTEST = re.compile(r'^\{\.python notest reason="[^"]+"\}$')


@dataclass(frozen=True)
class Fence:
    line: int  # of the opening fence
    info: str
    body: list[tuple[int, str]]  # (line number, line)


def fences(text: str) -> Iterator[Fence]:
    """Yield every fenced code block of ``text``."""
    opening: str | None = None
    start, info, body = 0, "", []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if opening is None:
            if match and not (match["fence"][0] == "`" and "`" in match["info"]):
                opening, start, info, body = match["fence"], number, match["info"].strip(), []
            continue
        closes = (
            match is not None
            and match["fence"][0] == opening[0]
            and len(match["fence"]) >= len(opening)
            and not match["info"].strip()
        )
        if closes:
            yield Fence(start, info, body)
            opening = None
        else:
            body.append((number, line))


def fenced_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for every line inside a fenced code block of ``text``."""
    for fence in fences(text):
        yield from fence.body


def test_fenced_lines_finds_the_lines_of_both_fence_kinds() -> None:
    text = "\n".join(
        [
            "prose ```not a fence```",
            "```python",
            "a = 1",
            "~~~",  # a tilde line does not close a backtick fence
            "```",
            "~~~~ yaml",
            "b: 2",
            "~~~",  # shorter than the opening fence
            "~~~~",
            "    ```text",  # indented, as in a list item or an admonition
            "    c",
            "    ```",
            "after",
        ]
    )
    assert list(fenced_lines(text)) == [
        (3, "a = 1"),
        (4, "~~~"),
        (7, "b: 2"),
        (8, "~~~"),
        (11, "    c"),
    ]
    assert [(f.line, f.info) for f in fences(text)] == [(2, "python"), (6, "yaml"), (10, "text")]


PAGES = sorted(DOCS_DIR.rglob("*.md"))
PAGE_IDS = [str(p.relative_to(DOCS_DIR)) for p in PAGES]


def _where(page: Path, line: int) -> str:
    return f"docs/{page.relative_to(DOCS_DIR).as_posix()}:{line}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_code_block_lines_are_at_most_88_characters(page: Path) -> None:
    wide = [
        f"{_where(page, number)}: {len(line)} characters: {line}"
        for number, line in fenced_lines(page.read_text(encoding="utf-8"))
        if len(line) > MAX_WIDTH
    ]
    assert not wide, f"code lines wider than {MAX_WIDTH} characters:\n" + "\n".join(wide)


def _misspelled_python_fence(info: str) -> bool:
    words = info.split()
    if words and words[0] in _PYTHON:
        return info != "python"
    return info.startswith("{") and ".python" in info and not _NOTEST.match(info)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_python_blocks_run_or_say_why_not(page: Path) -> None:
    wrong = [
        f"{_where(page, fence.line)}: ```{fence.info}"
        for fence in fences(page.read_text(encoding="utf-8"))
        if _misspelled_python_fence(fence.info)
    ]
    assert not wrong, (
        "spell a Python block ```python (it runs) or "
        '```{.python notest reason="why, in words"} (it does not):\n' + "\n".join(wrong)
    )


def test_the_docs_have_pages() -> None:
    assert len(PAGES) > 5
