"""The citable artifact: one deterministic ``.tar.gz`` of the study's results, and its reverse.

Layout of the bundle (every member under ``kvreuse-artifact/``, paths as in the repository,
so that the write-up's relative links work inside it)::

    kvreuse-artifact/
      manifest.json                     sha256 of every other member, provenance, config hash
      CITATION.cff                      the software citation, with the commit (and DOI) filled in
      README.md                         what this is and how to rebuild from it
      results/raw/<platform>/<experiment>/<arm>.jsonl, .meta.json
      results/benchmarks/<platform>/<experiment>/<arm>.tsv   the runs' wall times (cost table)
      results/tables/*.csv, *.md, *.tex
      results/figures/*.pdf, *.png
      paper/build/kvreuse.md, .tex, .bib, .pdf  the write-up: Markdown; LaTeX and BibTeX, and their PDF

Determinism: members are sorted by name, every header has mtime 0, uid/gid 0, empty owner
names and mode 0644; the gzip header has no file name and mtime 0; manifest.json is canonical
JSON (sorted keys) and holds nothing that depends on when or where it was built (no dates, no
host names, no absolute paths). The same files therefore give the same sha256.

The reverse (:func:`unpack`) checks the bundle's sha256 against the expected one *before*
extracting anything, then checks every member against the manifest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path, PurePosixPath

import yaml

from . import __version__
from .provenance import config_hash
from .migrate import read_converted

PREFIX = "kvreuse-artifact"
TAR_NAME = "kvreuse-artifact.tar.gz"
MANIFEST = "manifest.json"
FORMAT = 1
RAW_ROOT = "results/raw/"
BENCH_ROOT = "results/benchmarks/"  # the runs' Snakemake benchmark timings (the cost table's data)
ZENODO_RE = re.compile(r"^zenodo://record/\d+/[^/].*$")
VERSION_KEYS = ("vllm", "vllm_dist", "lmcache", "torch", "transformers", "snakemake", "python")


class ArtifactError(ValueError):
    """A pinned artifact that cannot be used: missing, tampered with, or malformed."""


class ArtifactChecksumError(ArtifactError):
    pass


# ---------------------------------------------------------------------------- checksums

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path | str, expected: str) -> str:
    """Return the file's sha256; raise ArtifactChecksumError naming both sums if it differs."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact.source: no file at {path}")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ArtifactChecksumError(
            f"artifact checksum mismatch for {path}: expected sha256 {expected.lower()} "
            f"(config artifact.sha256) but the file has sha256 {actual}. Refusing to use it: "
            f"nothing was extracted and nothing under results/ was touched. Fetch the artifact "
            f"again, or correct artifact.sha256 if the expected sum was mistyped.")
    return actual


def is_remote(source: str) -> bool:
    return "://" in source


def check_source(source: str) -> None:
    """A remote source must be a pinned Zenodo record file (never a 'latest' link)."""
    if is_remote(source) and not ZENODO_RE.match(source):
        raise ArtifactError(
            f"artifact.source {source!r}: a remote artifact must be a Zenodo record file, "
            f"zenodo://record/<record id>/{TAR_NAME} (the record id of one version, not the "
            f"concept record), or a local path")


# ---------------------------------------------------------------------------- names

def arcname(path: Path | str) -> str:
    """The member name of a repository file: raw files by their ``results/raw/...`` (or
    ``results/benchmarks/...``) suffix, so that raw files read from an unpacked artifact keep
    their canonical name."""
    s = Path(path).as_posix()
    i = max(s.rfind("/" + RAW_ROOT), s.rfind("/" + BENCH_ROOT))
    if i >= 0:
        s = s[i + 1:]
    elif PurePosixPath(s).is_absolute():
        raise ArtifactError(f"{path}: give repository-relative paths to the bundle")
    if ".." in PurePosixPath(s).parts or s.startswith("./"):
        raise ArtifactError(f"{path}: not a plain repository-relative path")
    return s


def results_digest(raw_files: list[Path | str]) -> str:
    """sha256 of the raw results (records, metas, benchmark timings): of the sorted
    ``<sha256>  <arcname>`` lines (the format of ``sha256sum``). The same measurements give the
    same digest wherever they sit."""
    lines = sorted(f"{sha256_file(f)}  {arcname(f)}\n" for f in raw_files)
    return sha256_bytes("".join(lines).encode())


# ---------------------------------------------------------------------------- citation

def citation(doi: str | None = None, source: str | None = None, sha256: str | None = None,
             results_sha256: str | None = None) -> dict:
    """What the write-up cites: the DOI when set, else the pinned bundle's sha256, else the
    digest of the raw results (a write-up inside a bundle cannot carry the bundle's own sum)."""
    doi = doi or None
    sha256 = (sha256 or "").lower() or None
    if doi:
        kind, value = "doi", doi
    elif sha256:
        kind, value = "sha256", sha256
    elif results_sha256:
        kind, value = "results-sha256", results_sha256
    else:
        kind, value = "none", "unpublished"
    short = value if kind in ("doi", "none") else f"{kind}:{value[:12]}"
    return {"id": value if kind in ("doi", "none") else f"{kind}:{value}", "short": short,
            "kind": kind, "doi": doi, "url": f"https://doi.org/{doi}" if doi else None,
            "source": source or None, "sha256": sha256, "results_sha256": results_sha256}


def citation_cff(base: str, commit: str | None, doi: str | None) -> str:
    """The repository's CITATION.cff with the commit (and the artifact's DOI) filled in."""
    cff = yaml.safe_load(base)
    if commit:
        cff["commit"] = commit
    if doi:
        ids = [i for i in cff.get("identifiers", []) if i.get("value") != doi]
        cff["identifiers"] = ids + [{"type": "doi", "value": doi,
                                     "description": "kvreuse results artifact (this bundle)"}]
    return yaml.safe_dump(cff, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------- manifest

def _one(values):
    vals = sorted({json.dumps(v, sort_keys=True) for v in values})
    out = [json.loads(v) for v in vals]
    return out[0] if len(out) == 1 else out


def provenance_from_metas(metas: list[dict]) -> tuple[dict, list[dict]]:
    """Per platform: accelerator, versions, model and weights; and one line per run."""
    by_platform: dict[str, list[dict]] = {}
    for m in metas:
        by_platform.setdefault(m["platform"], []).append(m)
    platforms = {}
    for p in sorted(by_platform):
        ms = by_platform[p]
        acc = [{k: (m.get("accelerator") or {}).get(k) for k in ("kind", "name", "count", "driver", "cuda")}
               for m in ms]
        vers = {k: _one((m.get("versions") or {}).get(k) for m in ms) for k in VERSION_KEYS}
        model = [{k: (m.get("model") or {}).get(k) for k in ("name", "source", "weights", "repo_id",
                                                              "revision", "load_format")} for m in ms]
        platforms[p] = {"accelerator": _one(acc), "versions": vers, "model": _one(model),
                        "git_commits": sorted({m.get("git_commit") for m in ms if m.get("git_commit")}),
                        "runs": len(ms)}
    runs = sorted(({"platform": m["platform"], "experiment": m["experiment"], "arm": m["arm"],
                    "status": m.get("status"), "config_hash": m.get("config_hash"),
                    "git_commit": m.get("git_commit")} for m in metas),
                  key=lambda r: (r["platform"], r["experiment"], r["arm"]))
    return platforms, runs


def gpu_classes(platforms: dict) -> list[str]:
    names = set()
    for info in platforms.values():
        accs = info["accelerator"] if isinstance(info["accelerator"], list) else [info["accelerator"]]
        names |= {a["name"] for a in accs if a.get("kind") == "gpu" and a.get("name")}
    return sorted(names)


def study_config(config: dict) -> dict:
    """The configuration that shaped the results: everything but the ``artifact`` section."""
    return {k: v for k, v in config.items() if k != "artifact"}


def manifest(files: dict[str, bytes], metas: list[dict], config: dict, commit: str | None,
             cite: dict) -> dict:
    platforms, runs = provenance_from_metas(metas)
    return {
        "name": PREFIX, "format": FORMAT, "kvreuse": __version__,
        "git_commit": commit,
        "config_hash": config_hash(study_config(config)),
        "config": study_config(config),
        "doi": cite.get("doi"),
        "rebuilt_from": ({"source": cite.get("source"), "sha256": cite.get("sha256")}
                         if cite.get("sha256") else None),
        "results_sha256": cite.get("results_sha256"),
        "platforms": platforms,
        "gpu_classes": gpu_classes(platforms),
        "runs": runs,
        "files": {name: {"sha256": sha256_bytes(data), "bytes": len(data)}
                  for name, data in sorted(files.items())},
    }


def readme(commit: str | None, cfg_hash: str, results_sha256: str) -> str:
    return (
        f"# kvreuse results artifact\n\n"
        f"The results of the kvreuse study (KV-cache reuse in vLLM serving), bundled by the "
        f"pipeline at commit `{commit}`. `manifest.json` lists the sha256 of every file here, the "
        f"versions of vLLM, LMCache, torch and Snakemake each platform ran, the accelerators, the "
        f"model and how its weights were made, and the configuration (hash `{cfg_hash}`).\n\n"
        f"Raw results digest (sha256 over the raw records, metas and benchmark timings): "
        f"`{results_sha256}`.\n\n"
        f"To rebuild every table, figure and the write-up from this file, without a GPU or vLLM, "
        f"check out the commit above and set in `config.yaml`:\n\n"
        f"    artifact:\n      source: path/to/{TAR_NAME}   # or zenodo://record/<id>/{TAR_NAME}\n"
        f"      sha256: <the sha256 of {TAR_NAME}>\n\n"
        f"then run `snakemake --cores 1` (see the README's \"Citing and rebuilding from the "
        f"artifact\").\n")


# ---------------------------------------------------------------------------- tar

def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A deterministic .tar.gz of ``members`` (name -> content), each under PREFIX/."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            data = members[name]
            info = tarfile.TarInfo(f"{PREFIX}/{name}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(files: list[Path | str], raw_files: list[Path | str], config: dict, commit: str | None,
          cite: dict, citation_cff_path: Path | str | None, out_tar: Path | str,
          out_sha256: Path | str, out_manifest: Path | str) -> str:
    """Bundle ``raw_files`` (jsonl, meta, benchmark tsv) and ``files`` (tables, figures, write-up); return
    the bundle's sha256. ``cite`` is :func:`citation`'s dict."""
    members: dict[str, bytes] = {}
    for f in list(raw_files) + list(files):
        name = arcname(f)
        if name in members:
            raise ArtifactError(f"two files would be bundled as {name}")
        members[name] = Path(f).read_bytes()
    # through the converter: a bundle remade from an older artifact's files keeps their bytes
    metas = [read_converted(str(f)[: -len(".meta.json")] + ".jsonl")[0].to_dict()
             for f in sorted(raw_files, key=arcname) if str(f).endswith(".meta.json")]
    if cite.get("results_sha256") is None:
        cite = {**cite, "results_sha256": results_digest(raw_files)}
    if citation_cff_path:
        members["CITATION.cff"] = citation_cff(Path(citation_cff_path).read_text(), commit,
                                               cite.get("doi")).encode()
    members["README.md"] = readme(commit, config_hash(study_config(config)),
                                  cite["results_sha256"]).encode()
    m = manifest(members, metas, config, commit, cite)
    manifest_text = json.dumps(m, indent=2, sort_keys=True) + "\n"
    members[MANIFEST] = manifest_text.encode()
    blob = tar_bytes(members)
    digest = sha256_bytes(blob)
    out_tar = Path(out_tar)
    _atomic_write_bytes(out_tar, blob)
    _atomic_write_bytes(Path(out_sha256), f"{digest}  {out_tar.name}\n".encode())
    _atomic_write_bytes(Path(out_manifest), manifest_text.encode())
    return digest


# ---------------------------------------------------------------------------- unpack

def _member_name(m: tarfile.TarInfo) -> str | None:
    parts = PurePosixPath(m.name).parts
    if not parts or parts[0] != PREFIX:
        raise ArtifactError(f"unexpected member {m.name!r}: every member lies under {PREFIX}/")
    if m.isdir():
        return None
    if not m.isfile():
        raise ArtifactError(f"member {m.name!r} is not a regular file (links are refused)")
    rest = parts[1:]
    if not rest or PurePosixPath(m.name).is_absolute() or ".." in rest:
        raise ArtifactError(f"unsafe member name {m.name!r}")
    return "/".join(rest)


def read_members(tar_path: Path | str) -> dict[str, bytes]:
    out = {}
    with tarfile.open(tar_path, "r:gz") as tar:
        for m in tar.getmembers():
            name = _member_name(m)
            if name is None:
                continue
            if name in out:
                raise ArtifactError(f"member {name!r} appears twice")
            out[name] = tar.extractfile(m).read()
    return out


def check_members(members: dict[str, bytes]) -> dict:
    """Every member matches manifest.json, and nothing is there that it does not list."""
    if MANIFEST not in members:
        raise ArtifactError(f"no {MANIFEST} in the artifact")
    m = json.loads(members[MANIFEST])
    listed = m.get("files", {})
    extra = sorted(set(members) - set(listed) - {MANIFEST})
    missing = sorted(set(listed) - set(members))
    if extra or missing:
        raise ArtifactError(f"artifact does not match its manifest: not listed {extra}, missing {missing}")
    for name, info in listed.items():
        got = sha256_bytes(members[name])
        if got != info["sha256"]:
            raise ArtifactChecksumError(
                f"artifact member {name}: manifest.json says sha256 {info['sha256']} but the "
                f"member has sha256 {got}. Refusing the artifact: nothing was unpacked and "
                f"nothing under results/ was touched.")
    return m


def unpack(tar_path: Path | str, expected_sha256: str, out_dir: Path | str) -> dict:
    """Verify the bundle, then its members, then extract into ``out_dir`` (all or nothing)."""
    verify(tar_path, expected_sha256)
    members = read_members(tar_path)
    m = check_members(members)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, data in members.items():
        dest = tmp / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return m


def raw_files(unpacked: Path | str, experiment: str, platforms: list[str]) -> list[str]:
    """The raw JSONL files of ``experiment`` in an unpacked artifact, for ``platforms``."""
    root = Path(unpacked) / RAW_ROOT
    return sorted(str(p) for p in root.glob(f"*/{experiment}/*.jsonl") if p.parent.parent.name in platforms)


def benchmark_files(unpacked: Path | str, platforms: list[str]) -> list[str]:
    """The runs' benchmark timings in an unpacked artifact, for ``platforms``."""
    root = Path(unpacked) / BENCH_ROOT
    return sorted(str(p) for p in root.glob("*/*/*.tsv") if p.parent.parent.name in platforms)
