"""Prune one small model of every Hugging Face family of issue 10 and of every timm family; say what still works.

Usage:
    python benchmarks/model_families.py [--suite hf|timm|all] [--only NAME ...] [--limit N] [--timeout SECONDS]
                                        [--without-plugins] [--markdown docs/model-families.md]

pruneframe-transformers and pruneframe-timm are pip-installed offline from
contrib/ into a temporary folder (unless they are importable already) and
found through their entry points; --without-plugins measures without them.

Hugging Face: each family is built from a small config (2 layers, hidden 64,
4 query / 2 key-value heads where the family has grouped-query attention,
intermediate 128, vocab 128; nothing is downloaded), pruned by MetaPruner 30%
with MagnitudeImportance(p=2), the input embedding and the LM (or
classification) head ignored. Recorded: parameters before and after, whether
the prune ran, whether the pruned model runs with the logits' shape unchanged,
whether save_pretrained + from_pretrained gives equal logits (float32, eval,
1e-5), the first line of the first error, the warnings, seconds.

timm: for every module of timm.models (a family), the model with the fewest
parameters (counted on the meta device; timm's test_* models left out) is
built with pretrained=False at the smallest input size that runs on the meta
device (96 to 224 px, through img_size where the model takes it), pruned the
same way with its classifier ignored, and run. A family is skipped, with the
reason, when its smallest model has more than 30M parameters or needs more
than 224 px.

Each model runs in a worker process with a timeout, so a hang or a crash
costs one row; the worker is restarted for the next model.
"""
from __future__ import annotations

import argparse
import datetime
import html
import importlib.util
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = {"pruneframe_transformers": "pruneframe-transformers", "pruneframe_timm": "pruneframe-timm"}
PLUGIN_ENTRY_NAMES = "transformers,timm"  # the entry-point names of the two distributions
RATIO = 0.3
HALF = 0.5  # the second prune: heads too (one of two key/value groups)
MAX_TIMM_PARAMETERS = 30_000_000
TIMM_SIZES = (96, 128, 160, 192, 224)
RESULT = "@@result "  # the worker's line prefixes; anything else it prints is passed on
START = "@@start "

# --- Hugging Face families -------------------------------------------------------------------------------------------
_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_DECODER = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64, **_IDS}
_ENCODER = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 64, **_IDS}
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128, "decoder_sparse_step": 1}
_SEQ2SEQ = {"vocab_size": 128, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
            "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, **_IDS, "decoder_start_token_id": 1}

# family -> (model_type, config fields, model class in transformers, inputs, what the output is, extra ignored modules)
HF_FAMILIES: dict[str, tuple[str, dict[str, Any], str, str, str, Callable[[Any], list[Any]]]] = {}


def _family(name: str, model_type: str, fields: dict[str, Any], cls: str = "AutoModelForCausalLM", inputs: str = "text",
            output: str = "logits", extra: Callable[[Any], list[Any]] = lambda model: []) -> None:
    HF_FAMILIES[name] = (model_type, fields, cls, inputs, output, extra)


for _name, _type in (("LLaMA", "llama"), ("Mistral", "mistral"), ("Qwen2", "qwen2"), ("Phi-3", "phi3"), ("OLMo2", "olmo2"),
                     ("Granite", "granite"), ("StarCoder2", "starcoder2"), ("StableLM", "stablelm")):
    _family(_name, _type, _DECODER)
for _name, _type in (("Qwen3", "qwen3"), ("Gemma", "gemma"), ("Gemma 2", "gemma2"), ("Gemma 3 (text)", "gemma3_text")):
    _family(_name, _type, {**_DECODER, "head_dim": 16})  # their default head_dim (128, 256) is not hidden / heads
_family("Falcon", "falcon", {"vocab_size": 128, "hidden_size": 64, "ffn_hidden_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "num_kv_heads": 2, "new_decoder_architecture": True, **_IDS})
_family("OPT", "opt", {"vocab_size": 128, "hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "word_embed_proj_dim": 64, "max_position_embeddings": 64, "pad_token_id": 1, "bos_token_id": 2,
                       "eos_token_id": 2})
_family("GPT-2", "gpt2", {"vocab_size": 128, "n_embd": 64, "n_inner": 128, "n_layer": 2, "n_head": 4, "n_positions": 64,
                          "bos_token_id": 1, "eos_token_id": 2})
_family("GPT-NeoX", "gpt_neox", _ENCODER)
_family("BERT", "bert", _ENCODER, "AutoModelForMaskedLM")
_family("RoBERTa", "roberta", {**_ENCODER, "pad_token_id": 1, "bos_token_id": 0}, "AutoModelForMaskedLM")
_family("DistilBERT", "distilbert", {"vocab_size": 128, "dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4,
                                     "max_position_embeddings": 64, "pad_token_id": 0}, "AutoModelForMaskedLM")
_family("ELECTRA", "electra", {**_ENCODER, "embedding_size": 64}, "AutoModelForMaskedLM")
_family("ViT", "vit", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8, "num_labels": 5},
        "AutoModelForImageClassification", inputs="image", extra=lambda model: [model.classifier])
_family("CLIP (text)", "clip_text_model", {**_ENCODER, "projection_dim": 32, "pad_token_id": 1, "bos_token_id": 0},
        "CLIPTextModelWithProjection", output="text_embeds", extra=lambda model: [model.text_projection])
_family("T5", "t5", {"vocab_size": 128, "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2,
                     "num_heads": 4, "pad_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 0},
        "AutoModelForSeq2SeqLM", inputs="seq2seq")
_family("BART", "bart", {**_SEQ2SEQ, "max_position_embeddings": 64}, "AutoModelForSeq2SeqLM", inputs="seq2seq")
_family("Whisper", "whisper", {**_SEQ2SEQ, "num_mel_bins": 16, "max_source_positions": 16, "max_target_positions": 32},
        "AutoModelForSpeechSeq2Seq", inputs="audio",
        extra=lambda model: [model.model.encoder.conv1, model.model.encoder.conv2])  # the audio input embedding
_family("Mixtral", "mixtral", {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2})
_family("Qwen2-MoE", "qwen2_moe", {**_DECODER, **_MOE, "shared_expert_intermediate_size": 128})
_family("Qwen3-MoE", "qwen3_moe", {**_DECODER, **_MOE, "head_dim": 16, "mlp_only_layers": []})
_family("OLMoE", "olmoe", {**_DECODER, "num_experts": 4, "num_experts_per_tok": 2})


def _hf_inputs(kind: str, config: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 128, (2, 10), generator=g)
    if kind == "text":
        return {"input_ids": text}
    if kind == "image":
        return {"pixel_values": torch.randn(2, 3, config.image_size, config.image_size, generator=g)}
    decoder = torch.randint(3, 128, (2, 6), generator=g)
    if kind == "seq2seq":
        return {"input_ids": text, "decoder_input_ids": decoder}
    features = torch.randn(2, config.num_mel_bins, 2 * config.max_source_positions, generator=g)
    return {"input_features": features, "decoder_input_ids": decoder}


# --- one measurement, in the worker -----------------------------------------------------------------------------------
def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line``, and the first line of the error it was raised while handling, if any."""
    text = str(exc).strip().splitlines()
    line = (f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)[:limit]
    context = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return line if context is None else f"{line} (raised while handling {_first_line(context, 200)})"


class _Row:
    """What one model's measurement found so far; ``stage`` runs one step and records its error instead of raising."""

    def __init__(self, **fields: Any):
        self.fields: dict[str, Any] = {"error": None, "failed_at": None, "warnings": {}, **fields}

    @property
    def failed(self) -> bool:
        return self.fields["failed_at"] is not None

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.failed:
            return None
        result = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = fn()
            except Exception as exc:  # a measurement reports the failure in its row; the traceback goes to stderr
                self.fields.update(error=_first_line(exc), failed_at=name)
                traceback.print_exc(file=sys.stderr)
        for w in caught:
            if not issubclass(w.category, (DeprecationWarning, FutureWarning)):
                first = str(w.message).strip().splitlines()[0][:400] if str(w.message).strip() else ""
                self.fields["warnings"].setdefault(w.category.__name__, [])
                if first not in self.fields["warnings"][w.category.__name__]:
                    self.fields["warnings"][w.category.__name__].append(first)
        return result


def _modules_of(roots: list[Any]) -> list[Any]:
    """Every module in ``roots`` and below, once (MetaPruner ignores exactly the modules it is given)."""
    seen: dict[int, Any] = {}
    for root in roots:
        if root is not None:
            for module in root.modules():
                seen.setdefault(id(module), module)
    return list(seen.values())


def _parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _from_config(cls: Any, config: Any) -> Any:
    """An Auto class builds with ``from_config``; a model class (CLIPTextModelWithProjection) with ``_from_config``."""
    return cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)


def _shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _shrunk(before: dict[str, tuple[int, ...]], model: Any) -> list[str]:
    """The names (last part) of the modules whose parameters lost channels: what the prune reached."""
    after = _shapes(model)
    return sorted({name.rsplit(".", 2)[-2] if name.count(".") else name
                   for name, shape in before.items() if after.get(name, shape) != shape})


def _size_mismatch(cls: Any, folder: str, model: Any) -> str:
    """What a model built from the saved config gets wrong: '' when every parameter has the saved shape."""
    import torch
    import transformers

    with torch.device("meta"):
        fresh = _from_config(cls, transformers.AutoConfig.from_pretrained(folder))
    built = _shapes(fresh)
    wrong = [(name, shape, built[name]) for name, shape in _shapes(model).items() if name in built and built[name] != shape]
    if not wrong:
        return ""
    name, saved, config = wrong[0]
    return (f"the saved config builds {len(wrong)} parameters in other sizes, e.g. {name}: saved {list(saved)}, "
            f"config builds {list(config)}")


def _prune(model: Any, inputs: Any, ignored: list[Any], forward_fn: Callable[[Any, Any], Any] | None,
           ratio: float = RATIO) -> None:
    import pruneframe as tp

    pruner = tp.pruner.MetaPruner(model, inputs, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                  ignored_layers=ignored, forward_fn=forward_fn)
    pruner.step()


def measure_hf(family: str) -> dict[str, Any]:
    """Build, prune, run and round-trip one Hugging Face family."""
    import torch
    import transformers

    model_type, fields, cls_name, input_kind, output, extra = HF_FAMILIES[family]
    row = _Row(suite="hf", family=family, model=cls_name)
    if model_type not in transformers.CONFIG_MAPPING:
        return {**row.fields, "skipped": f"transformers {transformers.__version__} has no model type {model_type!r}"}
    cls = getattr(transformers, cls_name)
    start = time.perf_counter()
    torch.manual_seed(0)

    def build() -> Any:
        config = transformers.AutoConfig.for_model(model_type, **fields)
        built = _from_config(cls, config).float().eval()
        row.fields["model"] = type(built).__name__
        return built

    model = row.stage("build", build)
    if model is None:
        return {**row.fields, "seconds": time.perf_counter() - start}
    inputs = _hf_inputs(input_kind, model.config)

    def run(m: Any, x: Any) -> Any:
        return getattr(m(**x), output)

    with torch.no_grad():
        shape = row.stage("build", lambda: tuple(run(model, inputs).shape))
    ignored = row.stage("build", lambda: _modules_of([model.get_input_embeddings(), model.get_output_embeddings(),
                                                       *extra(model)]))
    if row.failed:
        return {**row.fields, "seconds": time.perf_counter() - start}
    row.fields.update(before=_parameters(model), logits=list(shape))
    shapes = _shapes(model)
    row.stage("prune", lambda: _prune(model, inputs, ignored, run))
    row.fields.update(pruned=not row.failed, after=_parameters(model), shrunk=_shrunk(shapes, model))
    with torch.no_grad():
        pruned_out = row.stage("forward", lambda: run(model, inputs))
    if pruned_out is not None:
        row.fields["forward"] = tuple(pruned_out.shape) == shape
        if not row.fields["forward"]:
            row.fields.update(error=f"logits shape {tuple(pruned_out.shape)}, was {shape}", failed_at="forward")

    def saved_and_loaded(pruned: Any, expected: Any) -> float:
        with tempfile.TemporaryDirectory() as folder:
            pruned.save_pretrained(folder)
            try:
                reloaded = cls.from_pretrained(folder).float().eval()
            except RuntimeError:  # transformers' own line says only "look at the above report": say what differs
                mismatch = _size_mismatch(cls, folder, pruned)
                if mismatch:
                    raise RuntimeError(f"from_pretrained stops: {mismatch}") from None
                raise
        with torch.no_grad():
            return float((run(reloaded, inputs) - expected).abs().max())

    def round_trip() -> float:
        return saved_and_loaded(model, pruned_out)

    difference = row.stage("round-trip", round_trip)
    if difference is not None:
        row.fields["round_trip_difference"] = difference
        row.fields["round_trip"] = difference <= 1e-5
        if not row.fields["round_trip"]:
            row.fields.update(error=f"reloaded logits differ by {difference:.2e}", failed_at="round-trip")

    def plan_round_trip() -> float:  # the way out where the config cannot state a prune: replay the plan on a fresh model
        import pruneframe as tp

        state = tp.state_dict(model)
        torch.manual_seed(1)
        fresh = tp.load_state_dict(_from_config(cls, transformers.AutoConfig.for_model(model_type, **fields)).float().eval(),
                                   state_dict=state)
        with torch.no_grad():
            return float((run(fresh, inputs) - pruned_out).abs().max())

    if pruned_out is not None:  # measured even when the round-trip failed; the row keeps the first error
        earlier = row.fields["error"], row.fields["failed_at"]
        row.fields.update(error=None, failed_at=None)
        replayed = row.stage("plan round-trip", plan_round_trip)
        row.fields["plan_round_trip"] = replayed is not None and replayed <= 1e-5
        if earlier[1] is not None:
            row.fields.update(error=earlier[0], failed_at=earlier[1])
        elif replayed is not None and replayed > 1e-5:
            row.fields.update(error=f"replayed logits differ by {replayed:.2e}", failed_at="plan round-trip")

    def at_half() -> tuple[list[str], bool]:  # heads too: at 50% one of two key/value groups (or half the heads) can go
        torch.manual_seed(0)
        fresh = build()
        shapes_before = _shapes(fresh)
        _prune(fresh, inputs, _modules_of([fresh.get_input_embeddings(), fresh.get_output_embeddings(), *extra(fresh)]), run,
               HALF)
        with torch.no_grad():
            out = run(fresh, inputs)
        return _shrunk(shapes_before, fresh), saved_and_loaded(fresh, out) <= 1e-5

    half = row.stage("at 50%", at_half)
    if half is not None:
        row.fields.update(half_shrunk=half[0], half_round_trip=half[1])
    return {**row.fields, "seconds": time.perf_counter() - start}


def _timm_candidates(module: str) -> list[str]:
    import timm

    names = [n for n in timm.list_models(module=module) if not n.startswith("test_")]
    big = ("large", "huge", "giant", "gigantic", "xlarge", "7b", "so400m", "so150m", "_448", "_512", "_384")
    small = [n for n in names if not any(word in n for word in big)]
    return small or names


def _meta_model(name: str, **kwargs: Any) -> Any:
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def _smallest_timm_model(module: str) -> tuple[str, int]:
    """The model of ``module`` with the fewest parameters, counted on the meta device."""
    counted = []
    for name in _timm_candidates(module):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                counted.append((_parameters(_meta_model(name)), name))
            except Exception as exc:  # a model that cannot be built on the meta device is not a candidate; say so
                print(f"{module}: {name} is not counted, it does not build on the meta device: {_first_line(exc)}",
                      file=sys.stderr)
    if not counted:
        raise RuntimeError(f"no model of timm.models.{module} builds on the meta device")
    parameters, name = min(counted)
    return name, parameters


def _timm_input(name: str) -> tuple[int | None, dict[str, Any], str]:
    """The smallest size of TIMM_SIZES (and the img_size argument, where taken) at which ``name`` runs on the meta device.

    Returns (size, keyword arguments, ""), or (None, {}, the last error) when no size runs.
    """
    import torch

    last = ""
    for size in TIMM_SIZES:
        for kwargs in ({"img_size": size}, {}):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    model = _meta_model(name, **kwargs).eval()
                    with torch.no_grad():
                        model(torch.empty(1, 3, size, size, device="meta"))
                except Exception as exc:  # this size or argument does not fit: kept as the reason, the next is tried
                    last = _first_line(exc)
                    continue
            return size, kwargs, ""
    return None, {}, last


def measure_timm(module: str) -> dict[str, Any]:
    """Choose, build, prune and run the smallest model of one timm family."""
    import timm
    import torch

    row = _Row(suite="timm", family=module, model=None)
    start = time.perf_counter()
    chosen = row.stage("choose", lambda: _smallest_timm_model(module))
    if chosen is None:
        return {**row.fields, "seconds": time.perf_counter() - start}
    name, meta_parameters = chosen
    row.fields.update(model=name, before=meta_parameters)
    if meta_parameters > MAX_TIMM_PARAMETERS:
        return {**row.fields, "skipped": f"its smallest model, {name}, has {meta_parameters / 1e6:.1f}M parameters (> 30M)"}
    default = timm.get_pretrained_cfg(name).input_size[-1] if timm.get_pretrained_cfg(name) else 224
    size, kwargs, why = _timm_input(name)
    if size is None and default > 224:
        return {**row.fields, "skipped": f"{name} needs {default} px: no size of 96-224 px runs on the meta device ({why})"}
    if size is None:  # the meta device cannot run it at all: tried for real at its own size
        size = default
        row.fields["meta_error"] = why
    row.fields.update(input=size, kwargs=kwargs)
    choose_seconds = time.perf_counter() - start
    start = time.perf_counter()
    torch.manual_seed(0)
    model = row.stage("build", lambda: timm.create_model(name, pretrained=False, **kwargs).eval())
    if model is None:
        return {**row.fields, "seconds": time.perf_counter() - start, "choose_seconds": choose_seconds}
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shape = row.stage("build", lambda: tuple(model(x).shape))
    classifier = row.stage("build", model.get_classifier)
    if row.failed:
        return {**row.fields, "seconds": time.perf_counter() - start, "choose_seconds": choose_seconds}
    row.fields["before"] = _parameters(model)
    heads = list(classifier) if isinstance(classifier, (tuple, list)) else [classifier]
    ignored = _modules_of([h for h in heads if isinstance(h, torch.nn.Module)])
    row.stage("prune", lambda: _prune(model, x, ignored, None))
    row.fields.update(pruned=not row.failed, after=_parameters(model))
    with torch.no_grad():
        out = row.stage("forward", lambda: model(x))
    if out is not None:
        row.fields["forward"] = tuple(out.shape) == shape
        if not row.fields["forward"]:
            row.fields.update(error=f"output shape {tuple(out.shape)}, was {shape}", failed_at="forward")
    return {**row.fields, "seconds": time.perf_counter() - start, "choose_seconds": choose_seconds}


def worker(jobs: list[list[str]], threads: int) -> None:
    """Measure ``jobs`` ([suite, name] pairs) one after another, one result line each on stdout."""
    import torch

    torch.set_num_threads(threads)
    from pruneframe.registry import build_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import timm  # noqa: F401  (the framework plugins load once their framework is imported)
        import transformers

        transformers.utils.logging.disable_progress_bar()  # save_pretrained / from_pretrained bars would fill stderr
        transformers.utils.logging.set_verbosity_error()  # and its load report: the row says what differs
        plugins = [f"{p.distribution} {p.version}" for p in build_registry().plugins if not p.builtin]
    import pruneframe

    versions = {"pruneframe": pruneframe.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                "timm": timm.__version__, "Python": platform.python_version()}
    print(RESULT + json.dumps({"plugins": sorted(set(plugins)), "versions": versions}), flush=True)
    for index, (suite, name) in enumerate(jobs):
        print(f"{START}{index}", flush=True)
        result = measure_hf(name) if suite == "hf" else measure_timm(name)
        print(RESULT + json.dumps({"index": index, **result}), flush=True)


# --- the parent: install, run the workers with a timeout, write the table ---------------------------------------------
def plugin_site(workdir: Path) -> Path | None:
    """pip-install (offline) the contrib plugin distributions that are not importable yet into ``workdir``/site."""
    missing = [dist for package, dist in PLUGINS.items() if importlib.util.find_spec(package) is None]
    if not missing:
        return None
    site = workdir / "site"
    sources = []
    for dist in missing:  # built from copies: an in-tree build would leave build/ and *.egg-info in the checkout
        source = workdir / dist
        shutil.copytree(ROOT / "contrib" / dist, source,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
        sources.append(str(source))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--quiet", "--target", str(site), *sources], check=True)
    return site


def _worker_env(site: Path | None, without_plugins: bool) -> dict[str, str]:
    """The workers' environment: this checkout's pruneframe first on the path, and the plugins' site or their blocking."""
    env = dict(os.environ)
    paths = [str(ROOT)]
    if without_plugins:
        blocked = [n for n in env.get("PRUNEFRAME_DISABLE_PLUGINS", "").split(",") if n.strip()]
        env["PRUNEFRAME_DISABLE_PLUGINS"] = ",".join([*blocked, PLUGIN_ENTRY_NAMES])
    elif site is not None:
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH", "")) if p)
    return env


def revision() -> str:
    """The checkout's commit, and whether pruneframe/ or contrib/ differ from it (what the table measured)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "a source tree that is not a git checkout"
    dirty = git("status", "--porcelain", "--", "pruneframe", "contrib").stdout.strip()
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes in pruneframe/ or contrib/" if dirty else "")


def _lines(stream: Any, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def run_jobs(jobs: list[list[str]], env: dict[str, str], timeout: float, threads: int, workdir: Path) -> Iterator[dict]:
    """Yield one result per job (and first the loaded plugins), restarting the worker after a timeout or a crash."""
    pending = list(jobs)
    plugins_told = False
    while pending:
        jobs_file = workdir / "jobs.json"
        jobs_file.write_text(json.dumps(pending))
        process = subprocess.Popen([sys.executable, __file__, "--worker", str(jobs_file), "--threads", str(threads)],
                                   env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
        current, started, done = None, time.monotonic(), 0
        while True:
            try:
                line = lines.get(timeout=max(timeout - (time.monotonic() - started), 0.1))
            except queue.Empty:
                os.killpg(process.pid, 9)  # the worker we started, and only it
                process.wait()
                if current is None:
                    raise RuntimeError(f"the worker process said nothing for {timeout:.0f} s before a model started")
                yield {"suite": pending[current][0], "family": pending[current][1], "error": f"timed out after {timeout:.0f} s",
                       "failed_at": "timeout", "warnings": {}, "seconds": timeout}
                done = current + 1
                break
            if line is None:  # the worker ended: done, or it died
                process.wait()
                if current is not None:
                    yield {"suite": pending[current][0], "family": pending[current][1], "failed_at": "crash", "warnings": {},
                           "error": f"the worker process died (exit code {process.returncode})", "seconds": 0.0}
                    done = current + 1
                elif done == 0 and pending:
                    raise RuntimeError(f"the worker process stopped before its first model (exit code {process.returncode})")
                break
            if line.startswith(START):
                current, started = int(line[len(START):]), time.monotonic()
            elif line.startswith(RESULT):
                result = json.loads(line[len(RESULT):])
                started = time.monotonic()
                if "plugins" in result:
                    if not plugins_told:
                        plugins_told = True
                        yield result
                    continue
                done, current = result.pop("index") + 1, None
                yield result
            else:
                print(line, end="", file=sys.stderr)
        pending = pending[done:]


def _mark(value: Any) -> str:
    return {True: "yes", False: "**no**", None: "–"}[value]


def _removed_nothing(r: dict[str, Any]) -> bool:
    return bool(r.get("pruned")) and r.get("after") == r.get("before")


def _prune_mark(r: dict[str, Any]) -> str:
    return "**nothing removed**" if _removed_nothing(r) else _mark(r.get("pruned"))


def _cell(text: str | None) -> str:
    return html.escape(text or "", quote=False).replace("|", "&#124;").replace("`", "'").replace("*", "\\*")


def _warnings_cell(found: dict[str, list[str]]) -> str:
    return ", ".join(f"{category} ×{len(messages)}" for category, messages in sorted(found.items()))


HF_HEADER = ("| family | model | params before | params after | prune | layers that shrank | forward | round-trip "
             "| plan round-trip | at 50%: layers that shrank | at 50%: round-trip | seconds | first error | warnings |\n"
             "|---|---|---:|---:|---|---|---|---|---|---|---|---:|---|---|")
TIMM_HEADER = ("| family | smallest model | input | params before | params after | prune | forward | seconds | first error "
               "| warnings |\n|---|---|---:|---:|---:|---|---|---:|---|---|")


def table_row(r: dict[str, Any]) -> str:
    before = f"{r['before']:,}" if r.get("before") is not None else ""
    after = f"{r['after']:,}" if r.get("after") is not None and not r.get("skipped") else ""
    error = r.get("error")
    if r.get("skipped"):
        error = f"skipped: {r['skipped']}"
    elif error and r.get("failed_at"):
        error = f"{r['failed_at']}: {error}"
    seconds = f"{r['seconds']:.1f}" if r.get("seconds") is not None and not r.get("skipped") else ""
    if r["suite"] == "hf":
        cells = [r["family"], f"`{r.get('model')}`", before, after, _prune_mark(r), ", ".join(r.get("shrunk", [])),
                 _mark(r.get("forward")), _mark(r.get("round_trip")), _mark(r.get("plan_round_trip")),
                 ", ".join(r.get("half_shrunk", [])), _mark(r.get("half_round_trip")), seconds, _cell(error),
                 _warnings_cell(r.get("warnings", {}))]
    else:
        size = f"{r['input']} px" if r.get("input") else ""
        cells = [r["family"], f"`{r.get('model')}`" if r.get("model") else "", size, before, after, _prune_mark(r),
                 _mark(r.get("forward")), seconds, _cell(error), _warnings_cell(r.get("warnings", {}))]
    return "| " + " | ".join(cells) + " |"


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per suite: how many families prune, run and (Hugging Face) round-trip."""
    said = []
    for suite, label in (("hf", "Hugging Face"), ("timm", "timm")):
        listed = [r for r in rows if r["suite"] == suite]
        measured = [r for r in listed if not r.get("skipped")]
        if not listed:
            continue
        removed = [r for r in measured if r.get("pruned") and not _removed_nothing(r)]
        sentence = (f"{label}: {len(measured)} {'family' if len(measured) == 1 else 'families'} measured "
                    f"({len(listed) - len(measured)} skipped); the prune ran on "
                    f"{sum(bool(r.get('pruned')) for r in measured)} and removed parameters on {len(removed)}; forward ok "
                    f"{sum(bool(r.get('forward')) for r in measured)} ({sum(bool(r.get('forward')) for r in removed)} of them "
                    "with parameters removed)")
        if suite == "hf":
            sentence += (f"; round-trip ok {sum(bool(r.get('round_trip')) for r in measured)} "
                         f"({sum(bool(r.get('round_trip')) for r in removed)} of them with parameters removed); plan "
                         f"round-trip ok {sum(bool(r.get('plan_round_trip')) for r in measured)} "
                         f"({sum(bool(r.get('plan_round_trip')) for r in removed)} with parameters removed); at 50%, "
                         f"round-trip ok {sum(bool(r.get('half_round_trip')) for r in measured)}")
        said.append(sentence + ".")
    return said


def warning_notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = []
    for r in rows:
        for category, messages in sorted(r.get("warnings", {}).items()):
            for message in messages:
                notes.append(f"- {r['family']} ({category}): {_cell(message)}")
    return notes


INTRO = (
    "How far a plain `MetaPruner` prune gets on one small model of every Hugging Face family pruneframe aims to support and "
    "of every timm family. Hugging Face models are built from small configs (2 layers, hidden size 64, 4 query and 2 "
    "key/value heads where the family has grouped-query attention, intermediate size 128, vocabulary 128; nothing is "
    "downloaded). timm models are the smallest of each family (a family is the module of `timm.models` that defines the "
    "model; timm's `test_*` models are left out), built with `pretrained=False` at the smallest input size of 96-224 px "
    "they take. Each model is pruned by `MetaPruner` at 30% with `MagnitudeImportance(p=2)`, its input embedding and its "
    "LM or classification head ignored, and otherwise its defaults: with `keep_loadable=True` a group whose prune no config "
    "of the family can state (BERT's, GPT-2's or BART's attention width, tied to the hidden size in their code) is left "
    "whole with one warning, so those families lose MLP width only (`keep_loadable=False` prunes their attention too, "
    "and then only the plan round-trip holds). *forward*: the pruned model runs and its output shape is unchanged. *round-trip*: "
    "`save_pretrained` + `from_pretrained` gives logits equal to the pruned model's within 1e-5 (float32, eval mode). "
    "*plan round-trip*: `tp.state_dict(model)` loaded into a freshly built model with `tp.load_state_dict` gives the same "
    "logits (the way out where the config cannot state the prune, e.g. fewer heads of a fixed head size). "
    "*at 50%*: a fresh model pruned the same way at 50%, where one of the two key/value groups (or half the heads) "
    "can go: the layers that shrank, and whether it round-trips the same way. "
    "*first error*: the first line of the first failure, after the stage it happened in. *warnings*: how many distinct "
    "warnings of each kind the stages gave (listed at the end). Seconds are wall time on a shared machine with one torch "
    "thread: read them as rough.\n"
)


def write_markdown(path: Path, rows: list[dict[str, Any]], setup: dict[str, Any], command: str, seconds: float,
                   source: str) -> None:
    """The page: what is measured, when and with what, how to re-run, the summary, the tables and the warnings."""
    hf = [r for r in rows if r["suite"] == "hf"]
    tm = [r for r in rows if r["suite"] == "timm"]
    versions = dict(setup["versions"])
    produced = (f"Produced {datetime.date.today()} in {seconds / 60:.0f} minutes with pruneframe {versions.pop('pruneframe')} "
                f"({source}), " + ", ".join(f"{name} {version}" for name, version in versions.items())
                + f"; plugins: {', '.join(setup['plugins']) or 'none'}. Re-run with\n")
    rerun = ("(`--only NAME` measures one family, `--limit N` the first N families of each suite, `--without-plugins` "
             "measures without the contrib plugins; `python benchmarks/model_families.py --help` says more.)\n")
    parts = ["# Model families\n", INTRO, produced, "<!-- not-tested -->\n```sh\n" + command + "\n```\n", rerun,
             "\n\n".join(summary(rows)) + "\n"]
    if hf:
        parts += ["## Hugging Face\n", HF_HEADER + "\n" + "\n".join(table_row(r) for r in hf) + "\n"]
    if tm:
        parts += ["## timm\n", TIMM_HEADER + "\n" + "\n".join(table_row(r) for r in tm) + "\n"]
    notes = warning_notes(rows)
    if notes:
        parts += ["## Warnings\n", "The first line of each distinct warning, per family:\n", "\n".join(notes) + "\n"]
    path.write_text("\n".join(parts), encoding="utf-8")


def jobs_for(suite: str, only: list[str], limit: int | None) -> list[list[str]]:
    """The [suite, name] jobs: the HF families, then the timm modules, filtered by ``only`` and cut to ``limit`` each."""
    jobs: list[list[str]] = []
    if suite in ("hf", "all"):
        jobs += [["hf", name] for name in HF_FAMILIES][:limit]
    if suite in ("timm", "all"):
        import timm
        from timm.models._registry import _model_to_module

        modules = sorted({_model_to_module[n] for n in timm.list_models()})
        jobs += [["timm", name] for name in modules][:limit]
    if only:
        wanted = {n.lower() for n in only}
        jobs = [job for job in jobs if job[1].lower() in wanted]
        unknown = wanted - {job[1].lower() for job in jobs}
        if unknown:
            raise SystemExit(f"--only: no family named {sorted(unknown)}; HF families are {list(HF_FAMILIES)}, "
                             "timm families are the modules of timm.models (e.g. resnet, vision_transformer)")
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", choices=["hf", "timm", "all"])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="a family (an HF family name or a timm module); repeatable")
    parser.add_argument("--limit", type=int, help="only the first N families of each suite")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model (default 120)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the worker (default 1)")
    parser.add_argument("--without-plugins", action="store_true", help="measure without pruneframe-transformers and -timm")
    parser.add_argument("--markdown", type=Path, help="also write the page (table, date, versions) to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()), args.threads)
        return 0
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, not {args.limit}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, not {args.timeout}")
    jobs = jobs_for(args.suite, args.only, args.limit)
    command = " ".join(["python benchmarks/model_families.py", *(argv if argv is not None else sys.argv[1:])])
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    setup: dict[str, Any] = {}
    source = revision()  # before the plugins are copied: the state they are copied from
    with tempfile.TemporaryDirectory(prefix="model-families-") as tmp:
        site = None if args.without_plugins else plugin_site(Path(tmp))
        env = _worker_env(site, args.without_plugins)
        print(HF_HEADER if jobs and jobs[0][0] == "hf" else TIMM_HEADER, flush=True)
        for result in run_jobs(jobs, env, args.timeout, args.threads, Path(tmp)):
            if "plugins" in result:
                setup = result
                print(f"(plugins: {', '.join(setup['plugins']) or 'none'})", file=sys.stderr)
                continue
            if rows and rows[-1]["suite"] != result["suite"]:
                print("\n" + TIMM_HEADER)
            rows.append(result)
            print(table_row(result), flush=True)
    print("\n".join(summary(rows)))
    if args.markdown:
        write_markdown(args.markdown, rows, setup, command, time.perf_counter() - began, source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
