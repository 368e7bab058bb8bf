"""The rnn plugin: hidden-unit and input-feature pruning of LSTM, GRU and RNN, alone and through the graph."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import pruneframe as tp
from pruneframe.testing import assert_prune_equivalent, check_prune_equivalence, prune_random

torch.manual_seed(0)

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
NAME = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}


def _prune_fn(cls: type, kind: str):
    return getattr(tp, f"prune_{NAME[cls]}_{kind}_channels")


def _pruner(cls: type):
    return tp.get_registry().layer_pruner(cls)


def _kept(t: torch.Tensor, dim: int, keep: list[int]) -> torch.Tensor:
    return t.index_select(dim, torch.tensor(keep, dtype=torch.long))


def _state(layer: nn.Module) -> tuple[dict, tuple]:
    tensors = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    return tensors, (layer.input_size, layer.hidden_size)


def _same_state(a: tuple[dict, tuple], b: tuple[dict, tuple]) -> bool:
    return a[1] == b[1] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


CONFIGS = [
    # cls, num_layers, bidirectional, batch_first, bias
    (cls, layers, bidi, bf, bias)
    for cls in (nn.LSTM, nn.GRU, nn.RNN)
    for layers, bidi, bf, bias in [(1, False, False, True), (1, True, True, False), (2, False, True, True), (2, True, False, True)]
]


# --- direct (functional) pruning ---------------------------------------------------------------------

@pytest.mark.parametrize("cls, num_layers, bidirectional, batch_first, bias", CONFIGS)
def test_prune_hidden_units_keeps_exactly_the_right_slices(cls, num_layers, bidirectional, batch_first, bias) -> None:
    layer = cls(6, 10, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    before = copy.deepcopy(layer)
    ids = {name: id(p) for name, p in layer.named_parameters()}
    removed = [0, 4, 9]
    keep = [j for j in range(10) if j not in removed]
    g, d = GATES[cls], 2 if bidirectional else 1

    _prune_fn(cls, "out")(layer, removed)

    assert layer.hidden_size == 7 and layer.input_size == 6
    rows = [gate * 10 + j for gate in range(g) for j in keep]
    next_cols = [k * 10 + j for k in range(d) for j in keep]
    for name, p in layer.named_parameters():
        old = getattr(before, name)
        expected = _kept(old, 0, rows)
        if name.startswith("weight_hh"):
            expected = _kept(expected, 1, keep)
        elif name.startswith("weight_ih") and not name.startswith("weight_ih_l0"):
            expected = _kept(expected, 1, next_cols)
        assert torch.equal(p, expected), name
        assert id(p) == ids[name], f"{name} was replaced; the Parameter must keep its identity"

    x = torch.randn(3, 5, 6)  # (B, S, F) or (S, B, F): either way 3 x 5
    output, state = layer(x)
    assert output.shape == (3, 5, d * 7)
    for s in state if isinstance(state, tuple) else (state,):
        assert s.shape == (d * num_layers, 5 if not batch_first else 3, 7)
    assert layer(torch.randn(4, 6))[0].shape == (4, d * 7)  # unbatched


@pytest.mark.parametrize("cls, num_layers, bidirectional, batch_first, bias", CONFIGS)
def test_pruned_layer_computes_what_the_masked_original_computes(cls, num_layers, bidirectional, batch_first, bias) -> None:
    """The parameter layout is right: kept hidden units and inputs behave exactly as in the original, masked."""
    torch.manual_seed(1)
    layer = cls(6, 10, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias).double()
    reference = copy.deepcopy(layer)
    removed_out, removed_in = [1, 5, 8], [0, 3]
    keep_out = [j for j in range(10) if j not in removed_out]
    keep_in = [i for i in range(6) if i not in removed_in]
    d = 2 if bidirectional else 1

    _prune_fn(cls, "out")(layer, removed_out)
    _prune_fn(cls, "in")(layer, removed_in)
    _pruner(cls).mask_out_channels(reference, removed_out)
    _pruner(cls).mask_in_channels(reference, removed_in)

    x = torch.randn(3, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        got, _ = layer(x[..., keep_in])
        expected, _ = reference(x)
    out_cols = [k * 10 + j for k in range(d) for j in keep_out]
    assert torch.allclose(got, expected[..., out_cols], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_prune_input_features(cls) -> None:
    layer = cls(6, 10, num_layers=2, bidirectional=True)
    before = copy.deepcopy(layer)
    _prune_fn(cls, "in")(layer, [2, 5])
    assert layer.input_size == 4 and layer.hidden_size == 10
    for suffix in ("", "_reverse"):
        assert torch.equal(getattr(layer, f"weight_ih_l0{suffix}"), _kept(getattr(before, f"weight_ih_l0{suffix}"), 1, [0, 1, 3, 4]))
        assert torch.equal(getattr(layer, f"weight_ih_l1{suffix}"), getattr(before, f"weight_ih_l1{suffix}"))  # reads hidden units
    assert layer(torch.randn(5, 2, 4))[0].shape == (5, 2, 20)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize(
    "kind, idxs, error, message",
    [
        ("out", [3, 10], IndexError, r"\[10\] are out of range .* use 0\.\.9"),
        ("out", [-1], IndexError, r"\[-1\] are out of range"),
        ("out", [2, 2], ValueError, r"\[2\] are given more than once"),
        ("out", list(range(10)), ValueError, "all 10 hidden units"),
        ("in", [6], IndexError, r"\[6\] are out of range .* use 0\.\.5"),
        ("in", [1, 4, 1], ValueError, r"\[1\] are given more than once"),
        ("in", list(range(6)), ValueError, "all 6 input features"),
    ],
)
def test_bad_indices_are_refused_and_leave_the_layer_unchanged(cls, kind, idxs, error, message) -> None:
    layer = cls(6, 10, num_layers=2, bidirectional=True)
    before = _state(layer)
    with pytest.raises(error, match=message):
        _prune_fn(cls, kind)(layer, idxs)
    assert _same_state(_state(layer), before)
    assert layer(torch.randn(5, 2, 6))[0].shape == (5, 2, 20)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_lstm_with_projections_refuses_hidden_units_but_prunes_inputs() -> None:
    layer = nn.LSTM(6, 10, proj_size=4)
    before = _state(layer)
    with pytest.raises(ValueError, match="proj_size=4") as info:
        tp.prune_lstm_out_channels(layer, [0])
    assert "ignored_layers" in str(info.value)
    assert _same_state(_state(layer), before)
    tp.prune_lstm_in_channels(layer, [0])
    assert layer.input_size == 5 and layer(torch.randn(3, 2, 5))[0].shape == (3, 2, 4)


# --- through the dependency graph ------------------------------------------------------------------------

class Recurrent(nn.Module):
    """Linear(8->16) -> recurrent(16, 12, 2 layers, bidirectional, batch_first) -> output -> Linear(24->4)."""

    def __init__(self, cls: type, num_layers: int = 2, bidirectional: bool = True, batch_first: bool = True):
        super().__init__()
        d = 2 if bidirectional else 1
        self.fc1 = nn.Linear(8, 16)
        self.rnn = cls(16, 12, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
        self.fc2 = nn.Linear(d * 12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.fc1(x))
        return self.fc2(out)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("seed", [0, 1])
def test_graph_prune_is_exactly_the_masked_original(cls, seed) -> None:
    model = Recurrent(cls)
    error, pruned, graph = check_prune_equivalence(model, torch.randn(3, 5, 8), prune_random(0.3, seed=seed), seed=seed)
    assert graph.pruning_history()
    assert error < 1e-9
    assert pruned.rnn.hidden_size < 12, "the hidden units should have been pruned, not blocked"
    assert pruned.rnn.input_size < 16 and pruned.fc1.out_features == pruned.rnn.input_size
    d = 2 if pruned.rnn.bidirectional else 1
    assert pruned.fc2.in_features == d * pruned.rnn.hidden_size


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("num_layers, bidirectional, batch_first", [(1, False, False), (1, True, False), (3, False, True)])
def test_graph_prune_is_exact_for_other_shapes(cls, num_layers, bidirectional, batch_first) -> None:
    model = Recurrent(cls, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    error = assert_prune_equivalent(model, torch.randn(3, 5, 8), prune_random(0.3, seed=2))
    assert error < 1e-9


def test_graph_group_of_hidden_units_covers_both_directions_of_the_consumer() -> None:
    model = Recurrent(nn.LSTM)
    graph = tp.DependencyGraph().build_dependency(model, torch.randn(3, 5, 8))
    group = graph.get_pruning_group(model.rnn, tp.prune_lstm_out_channels, idxs=[1, 7])
    by_layer = {dep.target.module: sorted(idxs) for dep, idxs in group}
    assert by_layer == {model.rnn: [1, 7], model.fc2: [1, 7, 13, 19]}  # forward half and backward half
    group.prune()
    assert model.rnn.hidden_size == 10 and model.fc2.in_features == 20
    assert model(torch.randn(3, 5, 8)).shape == (3, 5, 4)


def test_the_checker_catches_a_missing_recurrent_mask(monkeypatch) -> None:
    """Without mask_out_channels the masked original differs: the check really tests the recurrent layout."""
    pruner_type = type(_pruner(nn.LSTM))
    monkeypatch.setattr(pruner_type, "mask_out_channels", lambda self, layer, idxs: None)
    error, pruned, _ = check_prune_equivalence(Recurrent(nn.LSTM), torch.randn(3, 5, 8), prune_random(0.3, seed=0))
    assert pruned.rnn.hidden_size < 12
    assert error > 1e-3


class WithInitialState(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.rnn = nn.LSTM(6, 10, batch_first=True)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.fc1(x), (h0, c0))
        return self.fc2(out)


def test_initial_state_from_the_caller_keeps_hidden_units() -> None:
    model = WithInitialState()
    inputs = (torch.randn(2, 4, 8), torch.randn(1, 2, 10), torch.randn(1, 2, 10))
    graph = tp.DependencyGraph().build_dependency(model, inputs)
    group = graph.get_pruning_group(model.rnn, tp.prune_lstm_out_channels, idxs=[0])
    assert not graph.check_pruning_group(group)  # h0 / c0 keep 10 channels, so no hidden unit may go
    prune_random(0.5, seed=0)(graph, model)
    assert model.rnn.hidden_size == 10
    assert model.rnn.input_size < 6  # the input side is independent and still pruned
    assert model(*inputs).shape == (2, 4, 3)


class EncoderDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.GRU(6, 10, batch_first=True)
        self.dec = nn.GRU(6, 10, batch_first=True)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, h = self.enc(x)
        out, _ = self.dec(y, h)
        return self.fc(out)


def test_state_passed_between_layers_prunes_both_together() -> None:
    """An encoder's final state is the decoder's initial state: their hidden units go together."""
    model = EncoderDecoder()
    inputs = (torch.randn(2, 4, 6), torch.randn(2, 3, 6))
    graph = tp.DependencyGraph().build_dependency(model, inputs)
    group = graph.get_pruning_group(model.enc, tp.prune_gru_out_channels, idxs=[0, 7])
    found = {dep.target.name: idxs for dep, idxs in group}
    assert found == {"enc": [0, 7], "dec": [0, 7], "fc": [0, 7]}
    assert graph.check_pruning_group(group)
    assert_prune_equivalent(EncoderDecoder(), inputs, prune_random(0.5, seed=0))
    prune_random(0.5, seed=0)(graph, model)
    assert model.enc.hidden_size == model.dec.hidden_size == 5
    assert model(*inputs).shape == (2, 3, 3)


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.rnn = nn.GRU(8, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        first, h = self.rnn(x[:2])
        second, _ = self.rnn(x[2:], h)  # its own final state comes back as the initial state
        return self.fc2(torch.cat([first, second]))


def test_layer_fed_its_own_state_prunes_and_stays_exact() -> None:
    error, pruned, _ = check_prune_equivalence(CalledTwice(), torch.randn(4, 2, 5), prune_random(0.3, seed=0))
    assert error < 1e-9
    assert pruned.rnn.hidden_size < 10 and pruned.rnn.input_size < 8


class Packed(nn.Module):
    """A packed sequence in, the final states of both directions out."""

    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(5, 6)
        self.rnn = nn.LSTM(6, 10, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.fc0(x), torch.tensor([4, 2]), batch_first=True)
        _, (h, _) = self.rnn(packed)
        return self.fc(torch.cat([h[0], h[1]], -1))


def test_packed_sequence_and_final_states_are_traced() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.UnsupportedOpWarning)  # packing itself is not an op pruneframe follows
        error, pruned, _ = check_prune_equivalence(Packed(), torch.randn(2, 4, 5), prune_random(0.3, seed=0))
    assert error < 1e-9
    assert pruned.rnn.hidden_size == 7 and pruned.fc.in_features == 14


class Projected(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(5, 8)
        self.rnn = nn.LSTM(8, 10, proj_size=4, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.fc0(x))
        return self.fc(out)


def test_projected_lstm_in_a_graph_prunes_only_its_inputs() -> None:
    error, pruned, _ = check_prune_equivalence(Projected(), torch.randn(4, 2, 5), prune_random(0.3, seed=0))
    assert error < 1e-9
    assert pruned.rnn.hidden_size == 10 and pruned.rnn.proj_size == 4 and pruned.rnn.input_size < 8
    assert pruned.fc.in_features == 8
