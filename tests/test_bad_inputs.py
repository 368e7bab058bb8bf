"""The bad-input catalogue: every case a clear error, raised before slow work, with the model and every file unchanged.

Each case names the error it raises, text the message must contain (the bad value, and the way out), and whether
the error may come after the model was traced (``after_trace``): an argument that can be checked alone must be
refused before the tracer runs. The model a case gets is compared, parameters, buffers, structure and mode, with a
copy taken before; the case's working directory is compared file by file.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torchvision
from torch import nn

import pruneframe as tp
import pruneframe.tracing
from pruneframe.app import cli, model_sources

X = torch.randn(1, 3, 32, 32)


class Env:
    """What a case may use: a fresh ResNet-18 (eval mode), its traced graph on demand, and a working directory."""

    def __init__(self, folder: Path):
        torch.manual_seed(0)
        self.model = torchvision.models.resnet18(weights=None).eval()
        self.folder = folder
        self._graph: tp.DependencyGraph | None = None

    @property
    def graph(self) -> tp.DependencyGraph:
        if self._graph is None:
            self._graph = tp.DependencyGraph().build_dependency(self.model, example_inputs=X)
        return self._graph

    def file(self, name: str, content: bytes | str) -> str:
        path = self.folder / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def saved(self) -> str:
        """A file written by ``pruneframe prune`` (MobileNet-V3-small with a little pruned), for load cases."""
        path = self.folder / "saved.pth"
        if not path.exists():
            assert cli.main(["prune", "torchvision:mobilenet_v3_small", "--ratio", "0.1", "--input-shape", "1,3,32,32",
                             "--out", str(path)]) == 0
        return str(path)

    def cli(self, *args: str) -> Any:
        return cli.main(list(args))


@dataclasses.dataclass
class Case:
    id: str
    run: Callable[[Env], Any]
    error: type[BaseException]
    says: tuple[str, ...]  # fragments the message must contain: the bad value and the way out
    after_trace: bool = False  # the error needs the traced model (an index out of a layer's range; inputs it cannot run on)
    builds: bool = False  # a command-line case whose error needs the model built (a layer name, the model's inputs)
    setup: Callable[[Env], Any] | None = None  # writes the files the case reads, before the "unchanged" snapshot


def _meta(env: Env, **kwargs: Any) -> tp.pruner.MetaPruner:
    return tp.pruner.MetaPruner(env.model, X, tp.importance.MagnitudeImportance(p=2), **kwargs)


def _plan(*entries: dict[str, Any], version: int = 1) -> dict[str, Any]:
    return {"format": "pruneframe-pruning-plan", "version": version, "steps": [list(entries)]}


def _load_plan(env: Env, plan: dict[str, Any]) -> None:
    tp.load_state_dict(env.model, state_dict={"state_dict": env.model.state_dict(), "pruning_plan": plan})


class _Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


API_CASES = [
    # building the graph
    Case("graph-inputs-wrong-shape", lambda e: tp.DependencyGraph().build_dependency(e.model, example_inputs=torch.randn(1, 7)),
         ValueError, ("example_inputs=Tensor(1, 7)", "Pass inputs the model accepts"), after_trace=True),
    Case("graph-inputs-none", lambda e: tp.DependencyGraph().build_dependency(e.model, example_inputs=None),
         ValueError, ("example_inputs=None", "Pass inputs the model accepts"), after_trace=True),
    Case("graph-not-a-module", lambda e: tp.DependencyGraph().build_dependency(lambda t: t, example_inputs=X),
         TypeError, ("takes an nn.Module", "not function")),
    Case("graph-verify-prunes", lambda e: tp.DependencyGraph().build_dependency(e.model, X, verify_prunes="sometimes"),
         ValueError, ("verify_prunes='sometimes'", "'auto', 'always'")),
    Case("graph-unwrapped-not-pairs", lambda e: tp.DependencyGraph().build_dependency(e.model, X, unwrapped_parameters=[3]),
         TypeError, ("unwrapped_parameters", "(parameter, dim) pairs", "3")),
    Case("register-not-a-type", lambda e: tp.DependencyGraph().register_customized_layer("Linear", object()),
         TypeError, ("a class such as MyLayer", "'Linear'")),
    Case("register-not-a-pruner", lambda e: tp.DependencyGraph().register_customized_layer(_Custom, object()),
         TypeError, ("has no prune_out_channels", "subclass pruneframe.pruner.BasePruningFunc")),
    # asking for a group
    Case("group-before-build", lambda e: tp.DependencyGraph().get_pruning_group(e.model.conv1, tp.prune_conv_out_channels, [0]),
         tp.PruningError, ("the graph is empty", "build_dependency(model, example_inputs) first")),
    Case("group-foreign-layer", lambda e: e.graph.get_pruning_group(nn.Conv2d(3, 3, 1), tp.prune_conv_out_channels, [0]),
         ValueError, ("Conv2d is not a node of the traced graph", "register_customized_layer"), after_trace=True),
    Case("group-index-out-of-range", lambda e: e.graph.get_pruning_group(e.model.conv1, tp.prune_conv_out_channels, [64]),
         IndexError, ("[64]", "use 0..63"), after_trace=True),
    Case("group-index-negative", lambda e: e.graph.get_pruning_group(e.model.conv1, tp.prune_conv_out_channels, [-1]),
         IndexError, ("[-1]", "use 0..63"), after_trace=True),
    Case("group-index-twice", lambda e: e.graph.get_pruning_group(e.model.conv1, tp.prune_conv_out_channels, [1, 1]),
         ValueError, ("[1]", "pass each index once"), after_trace=True),
    Case("group-index-not-int", lambda e: e.graph.get_pruning_group(e.model.conv1, tp.prune_conv_out_channels, [1.5]),
         TypeError, ("[1.5]", "whole numbers"), after_trace=True),
    Case("group-pruning-fn", lambda e: e.graph.get_pruning_group(e.model.conv1, print, [0]),
         ValueError, ("'print'", "prune_conv_out_channels"), after_trace=True),
    Case("group-empties-layer",
         lambda e: e.graph.get_pruning_group(e.model.conv1, tp.prune_conv_out_channels, list(range(64))).prune(),
         tp.PruningError, ("would remove all 64 output channels of conv1", "nothing was changed"), after_trace=True),
    Case("groups-root-types", lambda e: list(e.graph.get_all_groups(root_module_types=["conv"])),
         TypeError, ("root_module_types", "'conv'", "nn.Conv2d"), after_trace=True),
    # MetaPruner's arguments: all checked before the model is traced
    Case("meta-ratio-above-one", lambda e: _meta(e, pruning_ratio=1.5), ValueError, ("pruning_ratio=1.5", "[0, 1)")),
    Case("meta-ratio-negative", lambda e: _meta(e, pruning_ratio=-0.1), ValueError, ("pruning_ratio=-0.1", "[0, 1)")),
    Case("meta-steps", lambda e: _meta(e, iterative_steps=0), ValueError, ("iterative_steps=0", "positive int")),
    Case("meta-round-to", lambda e: _meta(e, round_to=0), ValueError, ("round_to=0", "positive int or None")),
    Case("meta-importance-name", lambda e: tp.pruner.MetaPruner(e.model, X, "l2"),
         TypeError, ("not str", "importance must be callable")),
    Case("meta-ignored-foreign", lambda e: _meta(e, ignored_layers=[nn.Linear(2, 2)]),
         ValueError, ("ignored_layers", "Linear(in_features=2", "not a layer of this model")),
    Case("meta-ignored-name", lambda e: _meta(e, ignored_layers=["fc"]),
         TypeError, ("ignored_layers", "'fc'", "model.fc")),
    Case("meta-ratio-dict-foreign", lambda e: _meta(e, pruning_ratio_dict={nn.Linear(2, 2): 0.3}),
         ValueError, ("pruning_ratio_dict", "Linear(in_features=2", "not a layer of this model")),
    Case("meta-ratio-dict-value", lambda e: _meta(e, pruning_ratio_dict={e.model.layer1: 2.0}),
         ValueError, ("pruning_ratio_dict[layer1]=2.0", "[0, 1)")),
    Case("meta-num-heads", lambda e: _meta(e, num_heads={e.model.fc: 0}), ValueError, ("num_heads[fc]=0", "positive int")),
    Case("meta-taylor-without-gradients",
         lambda e: tp.pruner.MetaPruner(e.model, X, tp.importance.TaylorImportance(), pruning_ratio=0.3).step(),
         tp.PruningError, ("TaylorImportance", "loss.backward()"), after_trace=True),
    # importance criteria
    Case("importance-reduction", lambda e: tp.importance.MagnitudeImportance(p=2, group_reduction="bogus"),
         ValueError, ("'bogus'", "mean, sum, max")),
    Case("importance-normalizer", lambda e: tp.importance.MagnitudeImportance(p=2, normalizer="bogus"),
         ValueError, ("'bogus'", "mean, max, sum")),
    Case("importance-p", lambda e: tp.importance.MagnitudeImportance(p="x"), TypeError, ("p='x'", "a positive number")),
    # counting
    Case("count-inputs-wrong-shape", lambda e: tp.utils.count_ops_and_params(e.model, torch.randn(1, 7)),
         ValueError, ("example_inputs=Tensor(1, 7)", "Pass inputs the model accepts")),
    # plans and saved files
    Case("plan-other-architecture", lambda e: _load_plan(e, _plan({"layer": "features.0", "kind": "out", "idxs": [0]})),
         tp.PruningError, ("'features.0'", "the plan is for another architecture")),
    Case("plan-index-out-of-range", lambda e: _load_plan(e, _plan({"layer": "conv1", "kind": "out", "idxs": [999]})),
         tp.PruningError, ("index 999", "64 output channels")),
    Case("plan-version", lambda e: _load_plan(e, _plan(version=99)), ValueError, ("version 99", "reads version 1")),
    Case("plan-json", lambda e: tp.plan.plan_from_json(str(e.folder / "plan.json")),
         ValueError, ("plan.json", "not a pruning plan"), setup=lambda e: e.file("plan.json", "{not json")),
    Case("load-pruned-missing", lambda e: tp.load_pruned(str(e.folder / "nothing.pth")),
         FileNotFoundError, ("nothing.pth", "pruneframe prune")),
    Case("load-pruned-not-torch", lambda e: tp.load_pruned(str(e.folder / "junk.pth")),
         ValueError, ("junk.pth", "not a file saved by pruneframe prune"), setup=lambda e: e.file("junk.pth", "junk")),
    Case("load-pruned-plain-state-dict", lambda e: tp.load_pruned(str(e.folder / "sd.pth")),
         ValueError, ("sd.pth", "no model source in it"), setup=lambda e: torch.save(e.model.state_dict(), e.folder / "sd.pth")),
]


def _mutated_saved(env: Env) -> str:
    saved = torch.load(env.saved(), weights_only=True)
    saved["pruning_plan"]["steps"][0][0]["idxs"] = [10_000]
    path = env.folder / "broken.pth"
    torch.save(saved, path)
    return str(path)


CLI_CASES = [
    Case("cli-ratio", lambda e: e.cli("prune", "torchvision:resnet18", "--ratio", "1.5", "--out", "x.pth"),
         SystemExit, ("--ratio 1.5", "e.g. 0.5 removes half")),
    Case("cli-steps", lambda e: e.cli("prune", "torchvision:resnet18", "--steps", "0", "--out", "x.pth"),
         SystemExit, ("--steps 0", "positive number of steps")),
    Case("cli-round-to", lambda e: e.cli("prune", "torchvision:resnet18", "--round-to", "0", "--out", "x.pth"),
         SystemExit, ("--round-to 0", "positive multiple")),
    Case("cli-out-missing-dir", lambda e: e.cli("prune", "torchvision:resnet18", "--out", "/missing/x.pth"),
         SystemExit, ("--out /missing/x.pth", "mkdir -p /missing")),
    Case("cli-out-directory", lambda e: e.cli("prune", "torchvision:resnet18", "--out", str(e.folder)),
         SystemExit, ("that is a directory", "pruned.pth")),
    Case("cli-hf-missing", lambda e: e.cli("prune", "hf:/nonexistent", "--out", "x.pth"),
         SystemExit, ("hf:/nonexistent", "never downloads"), builds=True),
    Case("cli-input-shape-wrong", lambda e: e.cli("prune", "torchvision:resnet18", "--input-shape", "1,7", "--out", "x.pth"),
         SystemExit, ("Tensor(1, 7)", "Pass inputs the model accepts"), after_trace=True, builds=True),
    Case("cli-input-shape-text", lambda e: e.cli("prune", "torchvision:resnet18", "--input-shape", "abc", "--out", "x.pth"),
         SystemExit, ("'abc'", "e.g. 1,3,224,224")),
    Case("cli-ignore-unknown", lambda e: e.cli("prune", "torchvision:resnet18", "--ignore", "nosuch", "--out", "x.pth"),
         SystemExit, ("--ignore nosuch", "no such layer"), builds=True),
    Case("cli-importance-unknown", lambda e: e.cli("prune", "torchvision:resnet18", "--importance", "nosuch", "--out", "x.pth"),
         SystemExit, ("'nosuch'", "use one of l1, l2")),
    Case("cli-importance-needs-data", lambda e: e.cli("prune", "torchvision:resnet18", "--importance", "taylor", "--out", "x"),
         SystemExit, ("'taylor' needs data", "the Python API")),
    Case("cli-source-unknown", lambda e: e.cli("prune", "foo:bar", "--out", "x.pth"),
         SystemExit, ("unknown source 'foo'", "FILE.py:factory"), builds=True),
    Case("cli-spec-without-source", lambda e: e.cli("prune", "resnet18", "--out", "x.pth"),
         SystemExit, ("'resnet18'", "torchvision:NAME"), builds=True),
    Case("cli-torchvision-unknown", lambda e: e.cli("prune", "torchvision:nosuch", "--out", "x.pth"),
         SystemExit, ("'nosuch'", "torchvision.models.list_models()"), builds=True),
    Case("cli-file-missing", lambda e: e.cli("prune", str(e.folder / "missing.py") + ":f", "--out", "x.pth"),
         SystemExit, ("missing.py", "does not exist"), builds=True),
    Case("cli-factory-missing", lambda e: e.cli("prune", "f.py:nosuch", "--out", "x.pth"),
         SystemExit, ("'nosuch'", "function"), builds=True, setup=lambda e: e.file("f.py", "x = 1\n")),
    Case("cli-factory-returns-int", lambda e: e.cli("prune", "f.py:bad", "--out", "x"),
         SystemExit, ("not int", "(model, example_inputs)"), builds=True, setup=lambda e: e.file("f.py", "def bad():\n    return 3\n")),
    Case("cli-factory-needs-shape", lambda e: e.cli("prune", "f.py:f", "--out", "x"),
         SystemExit, ("returns only a model", "--input-shape"), builds=True,
         setup=lambda e: e.file("f.py", "import torch\ndef f():\n    return torch.nn.Linear(4, 2)\n")),
    Case("cli-ratio-not-number", lambda e: e.cli("prune", "torchvision:resnet18", "--ratio", "abc", "--out", "x.pth"),
         SystemExit, ("'abc'", "--ratio")),
    Case("cli-command-unknown", lambda e: e.cli("nosuchcmd"), SystemExit, ("'nosuchcmd'", "choose from")),
    Case("cli-load-broken-plan", lambda e: tp.load_pruned(str(e.folder / "broken.pth")), tp.PruningError,
         ("10000", "out of range"), builds=True, setup=lambda e: _mutated_saved(e)),
]


def _model_state(model: nn.Module) -> tuple[Any, ...]:
    tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    modes = [m.training for m in model.modules()]
    return repr(model), tensors, modes, sorted(vars(model))


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def traces(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts traced forward passes."""
    calls: list[int] = []
    real = pruneframe.tracing.trace

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pruneframe.tracing, "trace", counted)
    return calls


def _check(case: Case, env: Env, traces: list[int], capsys: pytest.CaptureFixture[str]) -> str:
    if case.setup is not None:
        case.setup(env)
        capsys.readouterr()
    before_model, before_files = _model_state(env.model), _folder_state(env.folder)
    traced_before = len(traces)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case.error is SystemExit:  # the command line: exit code 2, the message on stderr
            try:
                code = case.run(env)
            except SystemExit as exc:  # argparse's own errors
                code = exc.code
            message = capsys.readouterr().err
            assert code == 2, message
        else:
            with pytest.raises(case.error) as raised:
                case.run(env)
            message = str(raised.value)
    for fragment in case.says:
        assert fragment in message, f"{fragment!r} is not in the message:\n{message}"
    if not case.after_trace:
        assert len(traces) == traced_before, "the error came only after the model was traced"
    after_model = _model_state(env.model)
    assert after_model[0] == before_model[0] and after_model[2:] == before_model[2:], "the model was changed"
    for name, tensor in before_model[1].items():
        assert torch.equal(after_model[1][name], tensor), f"{name} was changed"
    assert _folder_state(env.folder) == before_files, "files were written or changed"
    return message


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input(case: Case, tmp_path: Path, traces: list[int], capsys: pytest.CaptureFixture[str]) -> None:
    env = Env(tmp_path)
    if "load" in case.id or "plan" in case.id:
        env.file("keep.txt", "a user's file")
    _check(case, env, traces, capsys)


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input(case: Case, tmp_path: Path, traces: list[int], capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path)
    monkeypatch.chdir(tmp_path)
    built: list[str] = []
    if not case.builds:  # building a model is slow work too: an argument that can be checked alone is checked first
        real_build = model_sources.build

        def counted_build(*args: Any, **kwargs: Any) -> Any:
            built.append(args[0])
            return real_build(*args, **kwargs)

        monkeypatch.setattr(model_sources, "build", counted_build)
    _check(case, env, traces, capsys)
    if not case.builds:
        assert not built, f"the model {built[0]} was built before the bad argument was refused"


def test_the_catalogue_has_at_least_thirty_cases() -> None:
    ids = [c.id for c in API_CASES + CLI_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30, len(ids)
