"""Render a list of report blocks as Markdown and as one self-contained HTML page.

Blocks are tuples: ``("h1"|"h2"|"h3", text)``, ``("p", text)``, ``("ul", [items])``,
``("table", header, rows)``, ``("img", relative path, caption)``. Text may carry the two
inline forms the reports use, **bold** and `code`; Markdown keeps them, HTML renders them.

The HTML reads at page width (~900 px of text): 16 px body, 14 px tables whose numbers align
right in tabular figures (a mean's 95% interval on a smaller second line), metric names that
break after their underscores, images never wider than the page. Keeping tables narrow
enough is the caller's part (:data:`MAX_COLUMNS`).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

Block = tuple[Any, ...]

#: the widest table the page takes: wider ones are split or transposed by their builders
MAX_COLUMNS = 8


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in b[1]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(map(_md_cell, b[1])) + " |")
            out.append("|" + "---|" * len(b[1]))
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b[2]]
            out.append("")
        elif kind == "img":
            out += [f"![{b[2]}]({b[1]})", ""]
    return "\n".join(out)


def _inline_md(text: str) -> str:
    """Escape, then the two inline forms the report uses: **bold** and `code`."""
    s = html.escape(str(text), quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


_NUMBER = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)?(%|×)?$")
_WITH_CI = re.compile(r"^([-\d.,]+) (\[[-\d.,]+, [-\d.,]+\])$")
NUM = " class='num'"
_DASH = frozenset({"–", "-", ""})


def _is_number(x: Any) -> bool:
    t = str(x)
    return bool(_NUMBER.match(t) or _WITH_CI.match(t))


def _numeric(cells: list[Any]) -> bool:
    """Mostly numbers (blanks not counted): the column's header and blanks align right."""
    texts = [c for c in cells if str(c) not in _DASH]
    return bool(texts) and 2 * sum(map(_is_number, texts)) > len(texts)


def _words(s: str, *, keep_hyphens: bool = True) -> str:
    """HTML text that may break after an underscore (finished_<wbr>rate) and, with
    ``keep_hyphens``, never at a hyphen inside a word (min-p)."""
    if keep_hyphens:
        s = re.sub(r"(?<=\w)-(?=\w)", "\u2011", s)
    return re.sub(r"_(?=\w)", "_<wbr>", s)


def _html_cell(x: Any, num_column: bool) -> str:
    """A table cell: numbers right-aligned in tabular figures, a mean's 95% interval on a
    second, smaller line, inline Markdown (`code`, **bold**) rendered, long words breakable."""
    text = str(x)
    ci = _WITH_CI.match(text)
    if ci:
        return f"<td{NUM}>{ci[1]}<br><span class='ci'>{ci[2]}</span></td>"
    if _NUMBER.match(text) or (num_column and text in _DASH):
        return f"<td{NUM}>{html.escape(text, quote=False)}</td>"
    return f"<td>{_words(_inline_md(text))}</td>"


def _html_table(head: list[Any], rows: list[list[Any]]) -> str:
    cols = [i > 0 and _numeric([r[i] for r in rows]) for i in range(len(head))]
    heads = [
        f"<th{NUM if n else ''}>{_words(html.escape(str(h), quote=False), keep_hyphens=False)}</th>"
        for h, n in zip(head, cols, strict=True)
    ]
    lines = ["<div class='table'><table>", "<tr>" + "".join(heads) + "</tr>"]
    lines += [
        "<tr>" + "".join(_html_cell(c, n) for c, n in zip(row, cols, strict=True)) + "</tr>"
        for row in rows
    ]
    lines.append("</table></div>")
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:16px;color:#222;
  max-width:960px;margin:2em auto;padding:0 1.2em;line-height:1.5}
h1{font-size:1.8em}h2{font-size:1.4em;margin-top:1.8em;border-bottom:1px solid #ddd}h3{font-size:1.15em}
.table{max-width:100%;overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;table-layout:auto;max-width:100%;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 7px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f6f6f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.num{overflow-wrap:normal;white-space:nowrap}
.ci{color:#666;font-size:12px}
figure{margin:1.2em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:90%}
code{background:#f2f2f2;padding:0 3px;border-radius:3px;font-size:90%;overflow-wrap:normal;white-space:nowrap}
li{margin:.25em 0}
"""


def to_html(blocks: list[Block], root: Path) -> str:
    title = next((b[1] for b in blocks if b[0] == "h1"), "layergraft report")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{_inline_md(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_md(b[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_md(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(b[1], b[2]))
        elif kind == "img":
            data = base64.b64encode((root / b[1]).read_bytes()).decode()
            parts.append(
                f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'><figcaption>{html.escape(b[2])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
