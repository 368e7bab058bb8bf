"""A representative subset of docs/model-families.md, measured in CI by the benchmark's own code.

One family of each kind the table covers: a decoder with grouped-query attention (LLaMA), one with a fused
qkv (Phi-3), an encoder whose config ties the attention width to the hidden size (BERT: left whole so it loads),
an encoder-decoder (T5), a mixture of experts (Mixtral), and three timm families (a CNN, a ViT, one that slices
its channels).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from contrib_support import CONTRIB_ROOT, install_offline, installed_in_process

pytest.importorskip("transformers")
pytest.importorskip("timm")

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "model_families.py"


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    site = tmp_path_factory.mktemp("site")
    for distribution in ("pruneframe-transformers", "pruneframe-timm"):
        install_offline(CONTRIB_ROOT / distribution, tmp_path_factory.mktemp("source"), site)
    with installed_in_process(site, "pruneframe_transformers"), installed_in_process(site, "pruneframe_timm"):
        spec = importlib.util.spec_from_file_location("model_families_benchmark", BENCHMARK)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        try:
            yield module
        finally:
            del sys.modules[spec.name]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["LLaMA", "Phi-3", "BERT", "T5", "Mixtral"])
def test_a_hugging_face_family_prunes_runs_and_round_trips(families: Any, family: str) -> None:
    row = families.measure_hf(family)
    assert row["error"] is None, f"{family}: {row['failed_at']}: {row['error']}"
    assert row["after"] < row["before"] and row["forward"] and row["round_trip"] and row["plan_round_trip"]
    assert row["half_round_trip"]  # at 50% too, where key/value groups (Phi-3: through its fused qkv_proj) can go
    if family in ("LLaMA", "Phi-3", "Mixtral"):
        assert {"q_proj", "qkv_proj"} & set(row["half_shrunk"]), row["half_shrunk"]  # heads went at 50%


@pytest.mark.slow
@pytest.mark.parametrize("family", ["resnet", "vision_transformer", "ghostnet"])
def test_a_timm_family_prunes_and_runs(families: Any, family: str) -> None:
    row = families.measure_timm(family)
    assert row["error"] is None, f"{family}: {row['failed_at']}: {row['error']}"
    assert row["after"] < row["before"] and row["forward"]
