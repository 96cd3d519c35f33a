import json
from pathlib import Path

from kvreuse.lmcache.store import preflight
from kvreuse.plan import cuda_available
from kvreuse.results import atomic_write_text
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
spec = snakemake.params.spec  # noqa: F821
report = preflight(spec["store_root"], spec["arms"], spec["runs"], has_cuda=cuda_available())
atomic_write_text(Path(snakemake.output[0]), json.dumps(report, indent=2, sort_keys=True) + "\n")  # noqa: F821
