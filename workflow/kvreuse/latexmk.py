"""Compile the write-up's LaTeX to PDF with latexmk (pdflatex, BibTeX), and read its log.

The auxiliary files stay in a temporary folder; the PDF and the LaTeX log are copied beside
the ``.tex`` (``kvreuse.pdf``, ``kvreuse.log``). A failed run raises :class:`LatexError`
with the end of the log.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

COMMAND = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error"]

INSTALL = ("latexmk and a TeX engine are needed to build the write-up's PDF. "
           "On Debian/Ubuntu: sudo apt-get install --no-install-recommends latexmk "
           "texlive-latex-recommended texlive-fonts-recommended (or run envs/install-cpu.sh as "
           "root, which does that). Elsewhere install TeX Live (https://tug.org/texlive/) or MacTeX "
           "with latexmk, and make sure latexmk is on PATH.")


class LatexError(RuntimeError):
    pass


def log_tail(log: str, lines: int = 40) -> str:
    return "\n".join(log.splitlines()[-lines:])


def compile_pdf(tex: Path, pdf: Path, timeout: int = 300) -> Path:
    """``latexmk -pdf`` of ``tex`` (run in its folder, so that its relative paths and its .bib
    resolve) to ``pdf``; returns the LaTeX log's path (``<tex>.log``)."""
    exe = shutil.which(COMMAND[0])
    if exe is None:
        raise LatexError(INSTALL)
    tex, pdf = Path(tex).resolve(), Path(pdf)
    log_out = tex.with_suffix(".log")
    with tempfile.TemporaryDirectory(prefix="kvreuse-latex-") as tmp:
        cmd = [exe, *COMMAND[1:], f"-outdir={tmp}", tex.name]
        try:
            r = subprocess.run(cmd, cwd=tex.parent, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise LatexError(f"{' '.join(cmd)} ran longer than {timeout} s in {tex.parent}; "
                             "a TeX run waiting for input? Run it by hand there to see.") from e
        log = Path(tmp) / f"{tex.stem}.log"
        log_text = log.read_text(errors="replace") if log.exists() else ""
        if log.exists():
            shutil.copyfile(log, log_out)
        built = Path(tmp) / f"{tex.stem}.pdf"
        if r.returncode != 0 or not built.exists():
            tail = log_tail(log_text) if log_text else log_tail(r.stdout + r.stderr)
            raise LatexError(f"latexmk failed on {tex} (exit {r.returncode}); the full log is "
                             f"{log_out}. Its last lines:\n{tail}\n"
                             f"latexmk's own output ends:\n{log_tail(r.stdout + r.stderr, 15)}")
        shutil.copyfile(built, pdf)
    return log_out


# "Overfull \hbox (12.3pt too wide) in paragraph at lines 10--12"
_OVERFULL = re.compile(r"^Overfull \\([hv])box \((\d+(?:\.\d+)?)pt too (?:wide|high)\)(.*)$", re.M)


def overfull(log: str, tolerance_pt: float = 0.0) -> list[str]:
    """The log's overfull boxes wider (or higher) than ``tolerance_pt``, one line each."""
    return [m.group(0) for m in _OVERFULL.finditer(log) if float(m.group(2)) > tolerance_pt]


def float_problems(log: str) -> list[str]:
    """Floats (tables, figures) too large for the page, and undefined references."""
    pats = ("Float too large", "undefined", "Undefined")
    return [line for line in log.splitlines() if any(p in line for p in pats)]
