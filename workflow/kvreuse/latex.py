"""LaTeX from data: escaping, code and paths, booktabs tables, and the Jinja environment
whose delimiters (``\\VAR{}``, ``\\BLOCK{}``, ``\\#{}``) leave LaTeX's braces alone.

Every value a LaTeX template prints is escaped (the environment's ``finalize``), unless it is
already LaTeX (``markupsafe.Markup``: what the filters here return, or ``|safe``).
"""

from __future__ import annotations

import math
import numbers
import re
import textwrap

import jinja2
import pandas as pd
from markupsafe import Markup

from . import labels

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\textbraceleft{}", "}": r"\textbraceright{}", "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    # characters of the studies' text that pdfLaTeX's T1 fonts lack
    "\u2248": r"$\approx$", "\u2212": r"\textminus{}", "\u2192": r"$\rightarrow$", "\u00d7": r"$\times$",
    "\u2014": "---", "\u2013": "--", "\u2026": r"\ldots{}", "\u26a0": r"\textbf{(!)}", "\ufe0f": "",
}
_SPECIAL_RE = re.compile("|".join(re.escape(c) for c in _SPECIAL))


def escape(value) -> str:
    """``value`` as LaTeX text: its special characters escaped, and ``--`` kept as two hyphens
    (not an en dash: command-line flags)."""
    s = _SPECIAL_RE.sub(lambda m: _SPECIAL[m.group()], str(value))
    return s.replace("--", "-{}-").replace("--", "-{}-")


def code(value) -> Markup:
    """``value`` in typewriter type, with line breaks allowed after ``/ _ . - , :`` and, in
    long tokens (hashes, paths), between any two characters, so that it never runs off the line."""
    out = []
    for token in re.split(r"(\s+)", str(value)):
        long = len(token) > 16
        for ch in token:
            out.append(escape(ch))
            if ch in "/_.-,:":
                out.append(r"\penalty50{}")
            elif long:
                out.append(r"\penalty200{}")
    return Markup(r"\texttt{%s}" % "".join(out))


def path(value) -> Markup:
    """A file name as LaTeX reads it (``\\includegraphics``); refuses characters it cannot take."""
    s = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_./+-]+", s):
        raise ValueError(f"file name {s!r} has characters LaTeX cannot take in a file name: "
                         "move or rename it to letters, digits, '_', '-', '.', '/'")
    return Markup(s)


def url(value) -> Markup:
    return Markup(r"\url{%s}" % str(value).replace("\\", "/").replace("%", r"\%").replace("#", r"\#"))


def _is_na(x) -> bool:
    return x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isnan(x))


def number(x, digits: int = 1, signed: bool = False) -> str:
    """A cell's text: integers with thousands separators, floats to ``digits``, yes/no, '--'."""
    if _is_na(x):
        return "--"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        if float(x).is_integer() and not signed:
            text = f"{int(x):,}"
        else:
            text = f"{x:+,.{digits}f}" if signed else f"{x:,.{digits}f}"
        return r"\textminus{}" + text[1:] if text.startswith("-") else text
    return escape(x)


# cells shortened for the page: the table's caption and text say the rest
SHORT = {"provenance": lambda s: str(s).split(":", 1)[0].split(" (", 1)[0]}


def header(column: str, width: int = 11) -> str:
    """A column's header in lines of at most ``width`` characters, the unit on the last line."""
    lines = [escape(w) for w in textwrap.wrap(labels.name(column), width)]
    if labels.unit(column):
        lines.append(f"({escape(labels.unit(column))})")
    return r"\colhead{%s}" % r"\\".join(lines)


def table(data, columns: list[str], digits: int = 1, wrap: dict[str, str] | None = None,
          long: bool = False) -> Markup:
    """A booktabs ``tabular`` of ``columns`` (those present, or ranges of two present columns),
    headers from kvreuse.labels, numbers right-aligned; '(no rows)' when there are none.
    ``wrap``: column -> width (``3cm``): that column's text wraps, ragged right (and may break
    after an underscore); ``long``: a
    ``longtable`` that breaks across pages, its header repeated (not inside a float)."""
    df = pd.DataFrame(data) if isinstance(data, list) else data
    if df is None or df.empty:
        return Markup(r"\emph{(no rows)}")
    cells, align = {}, []
    for col in columns:
        signed = labels.signed(col)
        if col in labels.RANGES:
            lo, hi = labels.RANGES[col]
            if not {lo, hi} <= set(df.columns):
                continue
            cells[header(col)] = [
                "--" if _is_na(a) or _is_na(b) else f"{number(a, digits, signed)} to {number(b, digits, signed)}"
                for a, b in zip(df[lo], df[hi])]
            align.append("r")
        elif col in df.columns:
            numeric = pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])
            short = SHORT.get(col, lambda v: v)
            cells[header(col)] = [number(v if _is_na(v) else short(v), digits, signed)
                                  for v in df[col].astype(object)]
            align.append("r" if numeric else "l")
        if wrap and col in wrap and col in df.columns:
            align[-1] = r">{\raggedright\arraybackslash}p{%s}" % wrap[col]
            # a long name (lmcache_cpu_chunk1024) may break after its underscores, not run off its column
            cells[header(col)] = [c.replace(r"\_", r"\_\allowbreak{}") for c in cells[header(col)]]
    if not cells:
        return Markup(r"\emph{(no columns)}")
    out = pd.DataFrame(cells).style.hide(axis="index")
    tex = out.to_latex(hrules=True, column_format="".join(align))
    if long:
        tex = tex.replace(r"\begin{tabular}", r"\begin{longtable}", 1).replace(r"\end{tabular}", r"\end{longtable}", 1)
        tex = tex.replace("\\midrule\n", "\\midrule\n\\endhead\n", 1)
    return Markup(tex)


def _finalize(value):
    return value if isinstance(value, Markup) else escape("" if value is None else value)


def environment(folder, **filters) -> jinja2.Environment:
    """Jinja for LaTeX: ``\\VAR{x}`` prints x escaped, ``\\BLOCK{for ...}`` are statements,
    ``\\#{...}`` comments; filters ``code``, ``path``, ``url``, ``table``, ``tex`` (escape)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
        block_start_string=r"\BLOCK{", block_end_string="}",
        variable_start_string=r"\VAR{", variable_end_string="}",
        comment_start_string=r"\#{", comment_end_string="}",
        trim_blocks=True, lstrip_blocks=True, autoescape=False, finalize=_finalize)
    env.filters.update({"code": code, "path": path, "url": url, "table": table,
                        "tex": lambda v: Markup(escape(v)), **filters})
    return env
