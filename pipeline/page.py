"""What the report and the tables pages share: the paper's numbers file, data set titles, which
paper column a run compares with, and Markdown made into a self-contained HTML page."""

from __future__ import annotations

import html
import re
from pathlib import Path

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")

DATASET_TITLES = {"pfpascal": "PF-Pascal", "pfwillow": "PF-Willow", "spair": "SPair-71k", "embedded": "embedded"}


def paper_column(dataset: str, train_dataset: str) -> str | None:
    """The paper's column for an evaluation data set given the training data (PF-Pascal-trained
    models are evaluated on PF-Pascal, PF-Willow and SPair-71k (T); SPair-trained on SPair-71k (F))."""
    if dataset == "pfpascal" and train_dataset == "pfpascal":
        return "pfpascal"
    if dataset == "pfwillow" and train_dataset == "pfpascal":
        return "pfwillow"
    if dataset == "spair":
        return {"pfpascal": "spair_T", "spair": "spair_F"}.get(train_dataset)
    return None


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_CODE = re.compile(r"`([^`]+)`")

#: The pages' stylesheet, inline: the report must read the same offline (no CDN, no fonts to
#: fetch). A laptop-width column, tables that scroll sideways instead of squeezing, figures no
#: wider than the column.
STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1200px; margin: 1.5em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #d0d7de; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .15em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 13.5px; display: block;
        overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; min-width: 5em; }
th { background: #f6f8fa; }
td:first-child, th:first-child { text-align: left; white-space: normal; min-width: 12em; }
tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
pre { background: #f6f8fa; padding: .7em; overflow-x: auto; font-size: 12.5px; }
code { background: #f6f8fa; padding: 0 .25em; border-radius: 3px; font-size: 90%; }
ul { padding-left: 1.3em; } li { margin: .15em 0; }
a { color: #0969da; }
td a { white-space: nowrap; }
.headline { background: #f6f8fa; border-left: 4px solid #0969da; padding: .3em 1em; }
"""


def _inline(text: str) -> str:
    """Escaped text with Markdown links ``[t](url)`` as ``<a>``, ``**bold**`` as ``<b>`` and
    ``code`` as ``<code>``."""
    out = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', html.escape(text, quote=False))
    out = _CODE.sub(r"<code>\1</code>", out)
    return _BOLD.sub(r"<b>\1</b>", out)


def _split_cells(line: str) -> list[str]:
    """A Markdown table row's cells (``\\|`` is a literal bar inside a cell)."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def html_page(md: str, title: str = "SimSC report") -> str:
    """A small Markdown subset (headings, tables, images, lists, code, links, bold) as a
    standalone HTML page with :data:`STYLE` inline. The list of a section titled "Headline" is
    boxed."""
    out, in_table, in_code, in_list, in_box = [], False, False, False, False
    for line in md.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if in_table and not line.startswith("|"):
            out.append("</table>")
            in_table = False
        if in_list and not line.startswith("- "):
            out.append("</ul>")
            in_list = False
            if in_box:  # the headline box holds its list only
                out.append("</div>")
                in_box = False
        if line.startswith("|"):
            cells = _split_cells(line)
            if all(c and set(c) <= {"-", ":"} for c in cells):
                continue
            tag = "td" if in_table else "th"
            if not in_table:
                out.append("<table>")
                in_table = True
            # a cell's comparison (paper number, delta) on a line of its own under its value
            out.append(
                "<tr>"
                + "".join(
                    f"<{tag}>{_inline(c).replace('; paper ', '<br>paper ').replace('; Δ', '<br>Δ')}</{tag}>"
                    for c in cells
                )
                + "</tr>"
            )
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            if in_box and level <= 2:
                out.append("</div>")
                in_box = False
            text = line[level:].strip()
            out.append(f"<h{level}>{html.escape(text)}</h{level}>")
            if level == 2 and text.lower().startswith("headline"):
                out.append('<div class="headline">')
                in_box = True
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            out.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}"></p>')
        elif line.startswith("- "):
            if not in_list:
                out.append("<ul>")
                in_list = True
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    if in_list:
        out.append("</ul>")
    if in_box:
        out.append("</div>")
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )
