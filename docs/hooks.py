"""MkDocs hook: the docstrings cross-reference in Sphinx's style (:func:`~pkg.mod.name`), which
Markdown renders as the role's text followed by code; show the code alone, as Sphinx would
(``~`` keeps only the last part of the name)."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):<code>(~?)([^<]*)</code>")


def _name(m: re.Match[str]) -> str:
    name = m.group(2).split(".")[-1] if m.group(1) else m.group(2).lstrip(".")
    return f"<code>{name}</code>"


def on_page_content(html: str, **_: object) -> str:
    return _ROLE.sub(_name, html)
