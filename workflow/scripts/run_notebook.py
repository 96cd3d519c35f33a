"""Execute a jupytext percent-format notebook and save it as .ipynb (outputs included)."""
from pathlib import Path

import jupytext
from nbclient import NotebookClient

from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
nb = jupytext.read(snakemake.input.notebook)  # noqa: F821
root = Path.cwd()
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
jupytext.write(nb, snakemake.output[0], fmt="ipynb")  # noqa: F821
