"""Griffe extension: render the package's reStructuredText habits as the Google style expects.

The package's docstrings are Google style with three habits from Sphinx that griffe's Google
parser does not understand. Before a docstring is parsed this extension rewrites, in the copy
that the API reference renders (the source and ``python -m doctest`` are untouched):

- ``Example:`` headings to ``Examples:``. Griffe knows only the plural as an examples section; the
  singular becomes a generic admonition read as markdown, so doctest lines (``>>> x``) render as
  block quotes and outputs such as ``[[6, 7]]`` as broken cross-references.
- Sphinx roles (``:func:`name```, ``:class:`~pkg.Name```) to inline code (``name``, ``Name``).
- A literal-block marker ``text::`` to ``text:`` (the indented block after it already renders
  as code). Lines that would then read as a section heading (``Usage::``) are left alone.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const|term):`(?P<tilde>~?)(?P<target>[^`]+)`"
)
_LITERAL_MARKER = re.compile(r"^(?P<text>[ \t]*\S.*?)::[ \t]*$", re.MULTILINE)
_HEADING_LIKE = re.compile(r"^[ \t]*[\w][\s\w-]*$")


def _role_to_code(match: re.Match[str]) -> str:
    target = match.group("target").strip()
    if match.group("tilde"):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _literal_marker(match: re.Match[str]) -> str:
    text = match.group("text")
    if _HEADING_LIKE.match(text):
        return match.group(0)
    return f"{text}:"


def rewrite_docstring(text: str) -> str:
    """``text`` with the three rewrites described in the module docstring."""
    text = _SINGULAR_EXAMPLE.sub(r"\g<indent>Examples:", text)
    text = _ROLE.sub(_role_to_code, text)
    return _LITERAL_MARKER.sub(_literal_marker, text)


class SphinxHabits(griffe.Extension):
    """Apply :func:`rewrite_docstring` to every object's docstring."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the docstring once the object tree is complete (before it is parsed)."""
        if obj.docstring is not None:
            obj.docstring.value = rewrite_docstring(obj.docstring.value)
