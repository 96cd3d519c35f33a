"""The config schema (workflow/schemas/config.schema.yaml), read once: the one definition of
each config key, its description and its default.

Code that needs a key's default reads it here (:func:`default`) instead of writing it again
as ``params.get("key", <literal>)``; tests/test_schema_defaults.py looks for such literals.
This module imports nothing of kvreuse but :mod:`kvreuse.errors`, so any module can use it.

Defaults are annotations for jsonschema: :func:`kvreuse.config.validate` does not write them
into the config, so a key left out stays out (and out of the run's config hash). A validator
that does write them (``snakemake.utils.validate``) fills them only where a key is missing, and
the schema keeps the server defaults off ``definitions.server``, which the platforms' server
overrides share: a default filled in there would override the top-level ``server``.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from .errors import SchemaError

#: the config schema: workflow/schemas, next to the package folder workflow/kvreuse (the repo
#: and an editable install both run the package from there)
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def load(path: Path = SCHEMA_PATH) -> dict:
    """The config schema, parsed once (shared: do not change it)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise FileNotFoundError(
            f"kvreuse reads its config keys and their defaults from the config schema {path}, "
            f"which is not there ({e}); run kvreuse from its checkout (PYTHONPATH=workflow) or "
            f"install it editable (pip install -e .)") from e


def _resolve(ref: str, root: dict) -> dict:
    if not ref.startswith("#/"):
        raise SchemaError(f"config schema: only local $refs are read here, not {ref!r}")
    node = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _parts(node: dict, root: dict) -> list[dict]:
    """``node`` and what it includes: its ``$ref`` and ``allOf`` members, recursively."""
    out = [node]
    if "$ref" in node:
        out += _parts(_resolve(node["$ref"], root), root)
    for sub in node.get("allOf", ()):
        out += _parts(sub, root)
    return out


def key_schemas(*path: str, schema: dict | None = None) -> list[dict]:
    """The schemas that define the config key at ``path`` (``"server", "startup_timeout_s"``):
    from the ``properties`` of the level above, else its ``additionalProperties`` (so a
    platform's name, ``"platforms", "h100", "links_gb_s"``, finds the platforms' entry)."""
    root = load() if schema is None else schema
    nodes = [root]
    for i, key in enumerate(path):
        parts = [p for n in nodes for p in _parts(n, root)]
        found = [p["properties"][key] for p in parts if key in p.get("properties", {})]
        if not found:
            found = [p["additionalProperties"] for p in parts
                     if isinstance(p.get("additionalProperties"), dict)]
        if not found:
            raise SchemaError(f"config schema: no key {'.'.join(path[:i + 1])} "
                              f"(workflow/schemas/config.schema.yaml)")
        nodes = found
    return [p for n in nodes for p in _parts(n, root)]


def defines(*path: str, schema: dict | None = None) -> bool:
    """Whether the config schema has a key at ``path`` (``"experiments", "restart",
    "gpu_memory_utilization"``: no)."""
    try:
        key_schemas(*path, schema=schema)
    except SchemaError:
        return False
    return True


def default(*path: str, schema: dict | None = None):
    """The schema's default of the config key at ``path`` (a copy: a list or dict may be
    changed by the caller), e.g. ``default("experiments", "restart", "cold_reference")``;
    SchemaError naming the key when the schema gives it none."""
    for p in key_schemas(*path, schema=schema):
        if "default" in p:
            return copy.deepcopy(p["default"])
    raise SchemaError(f"config schema: {'.'.join(path)} has no default "
                      f"(add one in workflow/schemas/config.schema.yaml, or require the key)")


def get(section: dict, *path: str):
    """The config value of the key at ``path`` from ``section``, the config section it lies in
    (``section[path[-1]]``), or the schema's default where the key is left out:
    ``get(params, "experiments", "prefix_sweep", "min_prefix_tokens")``."""
    key = path[-1]
    return section[key] if key in section else default(*path)
