"""A model from a framework with a pruneframe family plugin, pruned without that plugin, warns and names what to install.

The contrib plugins are not installed in this environment (their own tests install them into a temporary site),
so these models meet exactly what a user without the plugin meets. Silence with the plugin installed is checked in
tests/test_contrib_transformers.py and tests/test_contrib_timm.py.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.errors import MissingPluginWarning


def _graph_warnings(model: nn.Module, inputs: object) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    return [str(w.message) for w in caught if issubclass(w.category, MissingPluginWarning)]


def test_a_hugging_face_model_without_its_plugin_names_pruneframe_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=50)
    (message,) = _graph_warnings(transformers.LlamaForCausalLM(config), {"input_ids": torch.randint(0, 50, (1, 6))})
    assert "LlamaForCausalLM is a transformers model" in message
    assert "pip install contrib/pruneframe-transformers" in message


def test_a_timm_model_without_its_plugin_names_pruneframe_timm() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1).eval()
    (message,) = _graph_warnings(model, torch.randn(1, 3, 32, 32))
    assert "timm model" in message and "pruneframe-timm" in message


def test_a_plain_torch_model_gets_no_such_warning() -> None:
    assert _graph_warnings(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4)) == []
