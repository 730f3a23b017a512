"""A tiny document model (headings, paragraphs, tables, figures) rendered two ways: Markdown, and one
self-contained HTML page (figures base64-embedded, inline CSS, no scripts, no external assets)."""
import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Cell:
    text: str
    note: str = ""        # a smaller second line, e.g. "n=500, CI 68.1-76.3"
    best: bool = False    # marked as the best in its row
    change: str = ""      # "gain" or "loss": a real (significant) change, marked ▲ or ▼
    href: str = ""        # a link, relative to the report file (e.g. to per-example outputs)


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list["Cell | str"]]
    caption: str = ""
    numeric: set[int] = field(default_factory=set)  # right-aligned column indexes
    group_rows: set[int] = field(default_factory=set)  # row indexes that are group titles (one cell)
    rule_before: set[int] = field(default_factory=set)  # row indexes preceded by a rule (e.g. the average)
    text: set[int] = field(default_factory=set)  # column indexes of running text (completions): wrapped, kept narrow


@dataclass
class Figure:
    path: Path
    caption: str = ""


Block = Heading | Para | Table | Figure


def _cell(c: "Cell | str") -> Cell:
    return c if isinstance(c, Cell) else Cell(str(c))


# ---------- Markdown ----------
def to_markdown(title: str, blocks: list[Block], base: Path) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Table):
            out += _md_table(b) + [""]
        elif isinstance(b, Figure):
            out += [f"![{b.caption}]({b.path.relative_to(base).as_posix()})", "", f"*{b.caption}*" if b.caption else "", ""]
    return "\n".join(out).rstrip() + "\n"


def _md_table(t: Table) -> list[str]:
    width = len(t.headers)
    lines = ([f"*{t.caption}*", ""] if t.caption else []) + [
        "| " + " | ".join(t.headers) + " |", "|" + "|".join("---:" if i in t.numeric else ":---" for i in range(width)) + "|"]
    for i, row in enumerate(t.rows):
        if i in t.group_rows:
            lines.append("| " + " | ".join([f"**{_md_escape(_cell(row[0]).text)}**"] + [""] * (width - 1)) + " |")
            continue
        lines.append("| " + " | ".join(_md_cell(_cell(c)) for c in row) + " |")
    return lines


def _md_cell(c: Cell) -> str:
    text = f"**{_md_escape(c.text)}**" if c.best or c.change else _md_escape(c.text)
    text += {"gain": " ▲", "loss": " ▼"}.get(c.change, "")
    text = f"[{text}]({c.href})" if c.href else text
    return f"{text} <sub>{_md_escape(c.note)}</sub>" if c.note else text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------- HTML ----------
CSS = """
body { font-family: "Latin Modern Roman", "Computer Modern", Georgia, "Times New Roman", serif; color: #111;
       max-width: 1180px; margin: 2em auto; padding: 0 1.5em; line-height: 1.45; font-size: 16px; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.1em; margin-top: 1.3em; }
p, .caption, figcaption { max-width: 60em; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; margin: 0 0 1.4em; }
table { border-collapse: collapse; border-top: 2px solid #111; border-bottom: 2px solid #111;
        font-variant-numeric: tabular-nums; }
.caption { font-style: italic; margin: 1.2em 0 0.4em; }
th { border-bottom: 1px solid #111; padding: 0.35em 0.9em; text-align: left; font-weight: 600; }
td { padding: 0.25em 0.9em; text-align: left; vertical-align: top; }
th.num, td.num { text-align: right; }
td .note { display: block; font-size: 0.76em; font-weight: 400; color: #555; white-space: nowrap; }
td.best { font-weight: 700; } td.best .main::after { content: " \\25B2"; font-size: 0.7em; color: #2a6; }
td.gain, td.loss { font-weight: 700; } td.gain .main::after { content: " \\25B2"; font-size: 0.7em; color: #2a6; }
td.loss .main { color: #b22; } td.loss .main::after { content: " \\25BC"; font-size: 0.7em; color: #b22; }
td.text { min-width: 10em; max-width: 24em; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.9em; }
tr.group td { font-style: italic; font-weight: 600; padding-top: 0.7em; color: #333; text-align: left; }
tr.rule td { border-top: 1px solid #111; }
figure { margin: 1em 0 1.6em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; font-style: italic; }
code { font-size: 0.9em; } a { color: #14a; }
@media (max-width: 900px) { body { margin: 1em auto; padding: 0 0.7em; font-size: 15px; }
                            th, td { padding: 0.25em 0.5em; } }
"""


def to_html(title: str, blocks: list[Block]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Table):
            body.append(_html_table(b))
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_table(t: Table) -> str:
    # the table scrolls sideways in its own box, so a wide one never widens the page
    parts = [f'<div class="caption">{html.escape(t.caption)}</div>' if t.caption else "", '<div class="scroll"><table>']
    parts.append("<thead><tr>" + "".join(f"<th{_num(t, i)}>{html.escape(h)}</th>" for i, h in enumerate(t.headers))
                 + "</tr></thead><tbody>")
    for i, row in enumerate(t.rows):
        if i in t.group_rows:
            parts.append(f'<tr class="group"><td colspan="{len(t.headers)}">{html.escape(_cell(row[0]).text)}</td></tr>')
            continue
        cls = ' class="rule"' if i in t.rule_before else ""
        parts.append(f"<tr{cls}>" + "".join(_html_cell(_cell(c), i in t.numeric, i in t.text) for i, c in enumerate(row))
                     + "</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _num(t: Table, i: int) -> str:
    return ' class="num"' if i in t.numeric else ""


def _html_cell(c: Cell, numeric: bool, text: bool = False) -> str:
    note = f'<span class="note">{html.escape(c.note)}</span>' if c.note else ""
    classes = " ".join(name for name, on in (("num", numeric), ("text", text), ("best", c.best), (c.change, c.change))
                       if on)
    cls = f' class="{classes}"' if classes else ""
    text = html.escape(c.text)
    main = f'<a href="{html.escape(c.href)}">{text}</a>' if c.href else text
    return f'<td{cls}><span class="main">{main}</span>{note}</td>'
