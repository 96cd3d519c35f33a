"""kvreuse.platforms: the one list of platforms, what reads it, and which GPU a platform needs."""

from __future__ import annotations

import yaml

from kvreuse import config as kc
from kvreuse import platforms
from kvreuse.platforms import BY_NAME, NAMES


def test_the_schema_the_config_and_the_figures_use_the_one_list(repo, config):
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    assert tuple(schema["definitions"]["platform_name"]["enum"]) == NAMES
    assert tuple(config["platforms"]) == NAMES
    from kvreuse.plotting import COLORS, PLATFORM_ORDER

    assert PLATFORM_ORDER == list(NAMES)
    assert set(NAMES) <= set(COLORS)


def test_the_schema_uses_the_one_list_of_experiments(repo):
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["properties"]["experiments"]["properties"]) == set(kc.EXPERIMENTS)
    assert set(schema["definitions"]["experiment_overrides"]["properties"]) == set(kc.EXPERIMENTS)


def test_a_platform_matches_its_gpu_model_only():
    assert [p.name for p in platforms.PLATFORMS if not p.gpu] == ["cpu"]
    assert BY_NAME["h200"].matches("NVIDIA H200")
    assert not BY_NAME["h200"].matches("NVIDIA GH200 480GB")
    assert BY_NAME["h100"].matches("NVIDIA H100 80GB HBM3") and BY_NAME["h100"].matches("NVIDIA H100 NVL")
    assert BY_NAME["a100"].matches("NVIDIA A100-SXM4-80GB")
    assert BY_NAME["l40s"].matches("NVIDIA L40S") and not BY_NAME["l40s"].matches("NVIDIA L40")
    assert not BY_NAME["cpu"].matches("NVIDIA H200")


def test_missing_gpus():
    assert platforms.missing_gpus(["cpu"], []) == []
    assert platforms.missing_gpus(["cpu", "h200", "l40s"], ["NVIDIA L40S"]) == [BY_NAME["h200"]]
    assert platforms.missing_gpus(["h100"], ["NVIDIA H200"]) == [BY_NAME["h100"]]  # not another model


def fake_nvidia_smi(tmp_path, monkeypatch, script: str) -> None:
    (tmp_path / "nvidia-smi").write_text(f"#!/bin/sh\n{script}\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_visible_gpus_from_nvidia_smi(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, 'echo "NVIDIA H200"; echo "NVIDIA H200"')
    assert platforms.visible_gpus() == (["NVIDIA H200", "NVIDIA H200"], None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert platforms.visible_gpus() == ([], "CUDA_VISIBLE_DEVICES='' hides every GPU")


def test_no_gpu_says_why(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    assert platforms.visible_gpus() == ([], "nvidia-smi failed (exit 9): NVIDIA-SMI has failed")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert platforms.visible_gpus() == ([], "no nvidia-smi on PATH (no NVIDIA driver on this machine)")
