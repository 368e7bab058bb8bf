"""Property-based tests: random architectures, random prunes, each equal to the masked original.

A hypothesis strategy draws a small random network description (a program of
steps over a growing list of feature maps, i.e. a small DAG) and
``GeneratedNet`` interprets it. The properties:

1. every random prune (``prune_random``) equals the original with the lost
   connections zeroed (float64, relative error < 1e-9), and most generated
   models do prune something;
2. the pruned model runs forward and backward, its output shape is unchanged
   and every layer's size attributes agree with its tensors;
3. channels that reach the model input or output are never pruned;
4. the model handed to the checker is left exactly as it was;
5. every block of channels ``get_all_groups`` offers, pruned in turn, is
   accepted by the layer pruners unless it would empty a layer.

Also here: a check that generated networks are valid, and minimal hand-written
reproductions of what the properties found (the tests at the end of the file).

The generator (``tests/architectures.py``) is described there.

Examples per property: ``PRUNEFRAME_HYPOTHESIS_EXAMPLES`` (default 25; it
overrides the long profile's count too). The seed is fixed (derandomize). A
long run (1000 examples per property) is one command::

    HYPOTHESIS_PROFILE=long pytest tests/test_property_based.py

and ``benchmarks/fuzz.py`` counts pass / wrong / error over any number of them.
"""
from __future__ import annotations

import copy
import os
import random
import warnings
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, target
from hypothesis import strategies as st
from torch import nn

from pruneframe import DependencyGraph, ModelStopsRunningError, UnsupportedOpWarning
from pruneframe.testing import check_prune_equivalence, prune_random

from architectures import INPUT_SHAPE, X, GeneratedNet, NetSpec, view_shuffle, net_specs, ratios, seeds

TOL = 1e-9
_EXAMPLES = os.environ.get("PRUNEFRAME_HYPOTHESIS_EXAMPLES")
_COMMON: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}
settings.register_profile("pruneframe-default", max_examples=int(_EXAMPLES or 25), **_COMMON)
settings.register_profile("long", max_examples=int(_EXAMPLES or 1000), **_COMMON)
PROFILE = settings.get_profile("long" if os.environ.get("HYPOTHESIS_PROFILE") == "long" else "pruneframe-default")


# --- helpers ---------------------------------------------------------------------------------------


def _widths(module: nn.Module) -> tuple[int, int]:
    """(input width, output width) of a conv, BatchNorm or Linear layer."""
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features, module.num_features
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise TypeError(f"no widths for {type(module).__name__}")


def _consistent(name: str, module: nn.Module) -> None:
    """Assert that a layer's size attributes agree with its tensors."""
    if isinstance(module, nn.Conv2d):
        assert module.weight.shape[0] == module.out_channels, name
        assert module.weight.shape[1] * module.groups == module.in_channels, name
        assert module.in_channels % module.groups == 0 and module.out_channels % module.groups == 0, name
        assert module.bias is None or module.bias.shape == (module.out_channels,), name
    elif isinstance(module, nn.BatchNorm2d):
        for t in (module.weight, module.bias, module.running_mean, module.running_var):
            assert t.shape == (module.num_features,), name
    elif isinstance(module, nn.Linear):
        assert module.weight.shape == (module.out_features, module.in_features), name


def _prune_copy(spec: NetSpec, ratio: float, seed: int) -> tuple[nn.Module, nn.Module, int]:
    """(original, pruned float32 copy, number of groups pruned)."""
    torch.manual_seed(seed)
    model = GeneratedNet(spec).eval()
    pruned = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedOpWarning)
        graph = DependencyGraph().build_dependency(pruned, X)
    done = prune_random(ratio=ratio, seed=seed)(graph, pruned)
    return model, pruned, done


def _n_params(model: nn.Module) -> int:
    """The number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


# --- property 1: exactness ------------------------------------------------------------------------


def test_random_prune_equals_masked_original() -> None:
    """Every random prune of a random network equals the masked original, and most networks do prune."""
    outcomes: list[bool] = []

    @PROFILE
    @given(spec=net_specs(), ratio=ratios, seed=seeds)
    def prune_is_exact(spec: NetSpec, ratio: float, seed: int) -> None:
        """One network, one random prune: exact, same output shape, fewer parameters, no unknown op."""
        model = GeneratedNet(spec)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnsupportedOpWarning)
            error, pruned, graph = check_prune_equivalence(model, X, prune_random(ratio=ratio, seed=seed), seed=seed)
        history = graph.pruning_history()
        outcomes.append(bool(history))
        event("pruned something" if history else "nothing prunable at this ratio")
        target(float(len(history)), label="groups pruned")
        assert error < TOL, f"pruned model differs from the masked original: relative error {error:.3e}"
        with torch.no_grad():
            assert pruned(X.double()).shape == model(X).shape
        if history:
            assert _n_params(pruned) < _n_params(model), "a prune was recorded but no parameter went away"
        unsupported = [str(w.message) for w in caught if issubclass(w.category, UnsupportedOpWarning)]
        assert not unsupported, f"a building block uses an op no plugin handles (its channels are blocked): {unsupported}"

    prune_is_exact()
    share = sum(outcomes) / max(1, len(outcomes))
    assert share >= 0.6, f"only {sum(outcomes)} of {len(outcomes)} generated networks pruned anything"


# --- property 2: the pruned model trains -------------------------------------------------------------


@PROFILE
@given(spec=net_specs(), ratio=ratios, seed=seeds)
def test_pruned_model_runs_forward_and_backward(spec: NetSpec, ratio: float, seed: int) -> None:
    """The pruned model's forward and backward run, its output shape is unchanged and its layers are consistent."""
    model, pruned, _ = _prune_copy(spec, ratio, seed)
    for m in (model, pruned):
        m.train()
        m(X).square().mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in pruned.named_parameters() if p.grad is not None}
    for name, p in pruned.named_parameters():
        assert p.grad is None or (p.grad.shape == p.shape and bool(torch.isfinite(p.grad).all())), name
    for name, module in pruned.named_modules():
        _consistent(name, module)
    pruned.eval()
    model.eval()
    with torch.no_grad():
        assert pruned(X).shape == model(X).shape


# --- property 3: input and output channels stay ------------------------------------------------------


@PROFILE
@given(spec=net_specs(), ratio=st.sampled_from([0.4, 0.5, 0.6]), seed=seeds)
def test_input_and_output_channels_are_never_pruned(spec: NetSpec, ratio: float, seed: int) -> None:
    """Layer widths tied to the model input (3 channels) or output (the logits) survive every prune."""
    model, pruned, _ = _prune_copy(spec, ratio, seed)
    before, after = dict(model.named_modules()), dict(pruned.named_modules())
    for name in spec.keep_in:
        assert _widths(after[f"layers.{name}"])[0] == _widths(before[f"layers.{name}"])[0], f"{name} lost input channels"
    for name in spec.keep_out:
        assert _widths(after[f"layers.{name}"])[1] == _widths(before[f"layers.{name}"])[1], f"{name} lost output channels"
    first_convs = [name for name, layer in spec.layers if layer.cls == "Conv2d" and layer.args[0] == INPUT_SHAPE[1]]
    for name in first_convs:
        if name in spec.keep_in:
            assert after[f"layers.{name}"].in_channels == INPUT_SHAPE[1]


# --- property 4: the user's model is not touched -----------------------------------------------------


@PROFILE
@given(spec=net_specs(), ratio=ratios, seed=seeds)
def test_the_checked_model_is_left_unchanged(spec: NetSpec, ratio: float, seed: int) -> None:
    """check_prune_equivalence prunes a copy: the model passed in keeps every tensor, dtype and width."""
    torch.manual_seed(seed)
    model = GeneratedNet(spec).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    widths = {n: _widths(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))}
    with torch.no_grad():
        out = model(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedOpWarning)
        check_prune_equivalence(model, X, prune_random(ratio=ratio, seed=seed), seed=seed)
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in state.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert widths == {n: _widths(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))}
    with torch.no_grad():
        assert torch.equal(model(X), out)


# --- property 5: what the graph offers, the layers accept -------------------------------------------


@PROFILE
@given(spec=net_specs(), seed=seeds)
def test_every_offered_block_is_accepted(spec: NetSpec, seed: int) -> None:
    """One root block of every group from get_all_groups, pruned in turn, is refused only for emptying a layer.

    A block is the smallest set of root channels the graph says can go
    together; a layer pruner that refuses it disagrees with the graph.
    """
    rng = random.Random(seed)
    model = GeneratedNet(spec).eval()
    with torch.no_grad():
        shape = model(X).shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsupportedOpWarning)
        graph = DependencyGraph().build_dependency(model, X)
    for group in list(graph.get_all_groups()):
        root = group[0].dep
        block = rng.choice(group.root_blocks())
        final = graph.get_pruning_group(root.target.module, root.trigger, block)
        problems = final.problems()
        assert all(p.startswith("it would remove all") for p in problems), problems
        if not problems:
            try:
                final.prune()
            except ModelStopsRunningError:  # the run check undid it: a size the code computes (view_shuffle's c // 2
                pass  # with one channel per group) -- not a layer pruner disagreeing with the graph
    with torch.no_grad():
        assert model(X).shape == shape


# --- the generator itself ----------------------------------------------------------------------------


@PROFILE
@given(spec=net_specs())
def test_generated_networks_are_valid(spec: NetSpec) -> None:
    """Every generated network runs, and its layers agree with the widths the generator planned."""
    model = GeneratedNet(spec)
    with torch.no_grad():
        out = model(X)
    last = dict(spec.layers)[spec.steps[-1].arg]
    assert out.shape == (INPUT_SHAPE[0], last.args[1])


# --- minimal reproductions of what the properties found ---------------------------------------------


class _SplitEqualSizes(nn.Module):
    """``torch.split`` with an explicit list of equal sizes: the sizes are fixed in the program."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)
        self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.split(self.c(x), [2, 2], dim=1)
        return self.a(p) + self.b(q)


def test_split_with_explicit_equal_sizes_is_pruned_exactly() -> None:
    """A prune never makes ``torch.split(x, [2, 2])`` see fewer than 4 channels (it would not run)."""
    error, pruned, _ = check_prune_equivalence(_SplitEqualSizes(), X, prune_random(ratio=0.5, seed=0))
    assert error < TOL
    assert pruned.c.out_channels == 4


class _GroupedConv(nn.Module):
    """A grouped conv (2 inputs and 2 outputs per group) between two plain convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 1)
        self.g = nn.Conv2d(4, 4, 1, groups=2)
        self.c2 = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.g(self.c1(x)))


def test_grouped_conv_whose_inputs_shrink_to_one_per_group_still_prunes_its_outputs() -> None:
    """After its inputs shrink to one per group, a grouped conv's output positions still prune as traced."""
    def step(graph: DependencyGraph, model: nn.Module) -> None:
        """Prune position 1 of each of g's groups from its inputs, then from its outputs."""
        graph.get_pruning_group(model.c1, _conv_out(graph, model.c1), [1, 3]).prune()  # g: 4 -> 2 inputs
        graph.get_pruning_group(model.g, _conv_out(graph, model.g), [1, 3]).prune()

    error, pruned, _ = check_prune_equivalence(_GroupedConv(), X, step)
    assert error < TOL
    assert (pruned.g.in_channels, pruned.g.out_channels, pruned.g.groups) == (2, 2, 2)


def _conv_out(graph: DependencyGraph, module: nn.Module) -> Callable[..., Any]:
    """The pruning function for ``module``'s output channels, as the graph's pruner provides it."""
    return graph.get_pruner_of_module(module).prune_out_channels


class _Understood(nn.Module):
    """A conv, one data-movement op on its output, and a consumer: the conv must stay prunable."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 5)
        self.a, self.b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)
        self.after = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.op == "flatten":
            return self.fc(torch.flatten(y, 1))
        if self.op == "chunk":
            p, q = torch.chunk(y, 2, dim=1)
            return self.a(p) + self.b(q)
        return self.after(view_shuffle(y))


@pytest.mark.parametrize("op", ["flatten", "chunk", "view_shuffle"])
def test_data_movement_is_understood_and_prunable(op: str) -> None:
    """Tracing flatten, chunk and a view-based channel shuffle warns of no unknown op, and the conv before them prunes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnsupportedOpWarning)
        error, pruned, _ = check_prune_equivalence(_Understood(op), X, prune_random(ratio=0.5, seed=0))
    assert [str(w.message) for w in caught if issubclass(w.category, UnsupportedOpWarning)] == []
    assert error < TOL
    assert pruned.conv.out_channels == 4


class _ViewShuffleTwoChannels(nn.Module):
    """A view-based channel shuffle with groups=2 on a 2-channel map: one channel per group."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(view_shuffle(self.c1(x)))


def test_view_shuffle_with_one_channel_per_group_keeps_the_group_count() -> None:
    """``view(n, 2, c // 2, h, w)`` fixes the 2: with c == 2 neither channel may go alone."""
    error, pruned, _ = check_prune_equivalence(_ViewShuffleTwoChannels(), X, prune_random(ratio=0.5, seed=0))
    assert error < TOL
    assert pruned.c1.out_channels == 2


@pytest.mark.slow
def test_the_long_fuzz_run_is_one_command() -> None:
    """benchmarks/fuzz.py (a census, not a test) runs, and a small run of it passes everything."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
    result = subprocess.run([sys.executable, str(script), "--examples", "30"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "30 pass, 0 wrong, 0 error, 0 error, model changed"
