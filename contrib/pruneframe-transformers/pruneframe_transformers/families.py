"""The module classes whose stored sizes must follow their weights even when no config can describe the model.

The config is inferred generically (``probing``, ``solving``, ``config_sync``),
and once a config is accepted every stored count the prune left stale is set
from the model rebuilt from it. What that cannot cover is a model no config
describes (layers pruned differently): a size the forward reads (GPT-2's
``split_size``, the key/value group count of grouped-query attention) must
still follow the weights, or the model stops running. A *family* entry serves
one module class of the installed transformers:

- ``fixup(module)``: set the sizes the module stores (head counts, widths,
  split sizes) from its sub-layers' current weight shapes. It raises
  ``ValueError`` when the shapes do not fit together (a width that is not a
  whole number of heads), never guesses; run inside a prune's transaction, the
  error undoes the prune.
- ``needs``: the attributes ``fixup`` reads and writes. A module of the class
  that lacks one (another transformers version laid it out differently)
  cannot be kept consistent, so the module hint keeps its projections whole.

Head widths never change here: the models reshape with ``view(..., -1,
head_dim)``, so the trace lets only the number of heads shrink and ties the
positions inside a head. The fix-ups rely on that and check it.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Callable

import attrs
from torch import nn


@attrs.frozen
class Family:
    """One module class: how to keep the sizes it stores right after a prune."""

    cls: type
    name: str
    fixup: Callable[[nn.Module], None]
    needs: tuple[str, ...]
    projections: tuple[str, ...]  # the sub-layers a hint keeps whole when ``needs`` is not met


def _whole(width: int, part: int, module: nn.Module, what: str) -> int:
    """``width / part`` when it is a whole number, else a ValueError naming the module."""
    if part <= 0 or width % part:
        raise ValueError(
            f"{type(module).__name__}: {what} has width {width}, which is not a whole number of heads of width {part}; "
            "pruneframe-transformers only keeps whole heads consistent"
        )
    return width // part


def _same(module: nn.Module, **widths: int) -> int:
    """The one value of ``widths`` (named sub-layer widths that must agree), or a ValueError listing them."""
    values = set(widths.values())
    if len(values) != 1:
        listed = ", ".join(f"{k}={v}" for k, v in widths.items())
        raise ValueError(f"{type(module).__name__}: these widths must be equal after pruning but are not: {listed}")
    return values.pop()


# --- attention: separate q/k/v/o projections and a stored head_dim (LLaMA, Qwen2, HF ViT) -------------------------
def _qkvo_heads(module: nn.Module) -> tuple[int, int, int]:
    d = module.head_dim
    q = _whole(_same(module, q_proj_out=module.q_proj.out_features, o_proj_in=module.o_proj.in_features), d, module, "q_proj")
    kv = _whole(_same(module, k_proj_out=module.k_proj.out_features, v_proj_out=module.v_proj.out_features), d, module, "k_proj")
    return q, kv, d


def _gqa_fixup(module: nn.Module) -> None:
    q, kv, _ = _qkvo_heads(module)
    if q % kv:
        raise ValueError(f"{type(module).__name__}: {q} query heads cannot share {kv} key/value heads evenly")
    module.num_key_value_groups = q // kv
    # older transformers versions store the head counts too
    if isinstance(getattr(module, "num_heads", None), int):
        module.num_heads = q
    if isinstance(getattr(module, "num_key_value_heads", None), int):
        module.num_key_value_heads = kv


def _vit_fixup(module: nn.Module) -> None:
    q, kv, _ = _qkvo_heads(module)
    if q != kv:
        raise ValueError(f"{type(module).__name__}: {q} query heads but {kv} key/value heads; it has no grouped-query attention")
    module.num_attention_heads = q


# --- attention: query/key/value and a stored attention_head_size (BERT, older HF ViT) ----------------------------
def _bert_heads(module: nn.Module) -> int:
    width = _same(module, query_out=module.query.out_features, key_out=module.key.out_features,
                  value_out=module.value.out_features)
    return _whole(width, module.attention_head_size, module, "query")


def _bert_fixup(module: nn.Module) -> None:
    module.num_attention_heads = _bert_heads(module)
    module.all_head_size = module.query.out_features


# --- attention: GPT-2's fused c_attn (Conv1D) split into q, k, v with a stored split_size ------------------------
def _gpt2_heads(module: nn.Module) -> tuple[int, int]:
    """(query width, heads). Self-attention splits c_attn in three; cross-attention has q_attn and splits c_attn in two."""
    fused = module.c_attn.nf
    if getattr(module, "is_cross_attention", False):
        width = module.q_attn.nf
        if fused != 2 * width:
            raise ValueError(f"{type(module).__name__}: c_attn has {fused} outputs, not twice q_attn's {width}")
    else:
        if fused % 3:
            raise ValueError(f"{type(module).__name__}: c_attn has {fused} outputs, which do not split into equal q, k, v")
        width = fused // 3
    _same(module, query=width, c_proj_in=module.c_proj.nx)
    return width, _whole(width, module.head_dim, module, "c_attn's query part")


def _gpt2_fixup(module: nn.Module) -> None:
    width, heads = _gpt2_heads(module)
    module.split_size = width  # forward splits c_attn's output with this literal
    module.num_heads = heads
    module.embed_dim = module.c_proj.nf


def _gpt2_model_fixup(module: nn.Module) -> None:
    module.embed_dim = module.wte.embedding_dim


# (module of transformers.models, class name, family name, fixup, needs, projections)
_TABLE: tuple[tuple[str, str, str, Callable[[nn.Module], None], tuple[str, ...], tuple[str, ...]], ...] = (
    ("llama.modeling_llama", "LlamaAttention", "llama-attention", _gqa_fixup,
     ("head_dim", "num_key_value_groups", "q_proj", "k_proj", "v_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("qwen2.modeling_qwen2", "Qwen2Attention", "qwen2-attention", _gqa_fixup,
     ("head_dim", "num_key_value_groups", "q_proj", "k_proj", "v_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("vit.modeling_vit", "ViTAttention", "vit-attention", _vit_fixup,
     ("head_dim", "num_attention_heads", "q_proj", "k_proj", "v_proj", "o_proj"), ("q_proj", "k_proj", "v_proj", "o_proj")),
    ("vit.modeling_vit", "ViTSelfAttention", "vit-self-attention", _bert_fixup,
     ("attention_head_size", "num_attention_heads", "all_head_size", "query", "key", "value"), ("query", "key", "value")),
    ("bert.modeling_bert", "BertSelfAttention", "bert-self-attention", _bert_fixup,
     ("attention_head_size", "num_attention_heads", "all_head_size", "query", "key", "value"), ("query", "key", "value")),
    ("gpt2.modeling_gpt2", "GPT2Attention", "gpt2-attention", _gpt2_fixup,
     ("head_dim", "num_heads", "split_size", "embed_dim", "c_attn", "c_proj"), ("c_attn", "c_proj")),
    ("gpt2.modeling_gpt2", "GPT2Model", "gpt2-model", _gpt2_model_fixup, ("embed_dim", "wte"), ()),
)


@lru_cache(maxsize=None)
def families() -> tuple[Family, ...]:
    """The entries whose class exists in the installed transformers (a class it lacks is skipped)."""
    found = []
    for module_name, class_name, name, fixup, needs, projections in _TABLE:
        try:
            module = importlib.import_module(f"transformers.models.{module_name}")
        except ImportError:  # a model family this transformers version does not ship
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type):
            found.append(Family(cls, name, fixup, needs, projections))
    return tuple(found)


@lru_cache(maxsize=None)
def _by_class() -> dict[type, Family]:
    return {family.cls: family for family in families()}


def family_of(module: nn.Module) -> Family | None:
    """The entry for ``module``'s class (the most specific one along its MRO), or None."""
    table = _by_class()
    for cls in type(module).__mro__:
        family = table.get(cls)
        if family is not None:
            return family
    return None


def missing_needs(module: nn.Module, family: Family) -> list[str]:
    """The attributes ``family`` relies on that ``module`` does not have."""
    return [name for name in family.needs if not hasattr(module, name)]
