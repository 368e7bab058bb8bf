"""tp.utils.count_ops_and_params: MACs counted by hand, against FlopCounterMode, and the model left untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import pruneframe as tp

count = tp.utils.count_ops_and_params


def macs_of(model: nn.Module, inputs) -> int:
    return count(model, inputs)[0]


class Call(nn.Module):
    """A module whose forward is a given function of its inputs."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


# --- counted by hand ------------------------------------------------------------


def test_conv2d_macs_by_hand() -> None:
    # out (1, 4, 7, 5); each output element: 3 in-channels * 3 * 5 taps
    assert macs_of(nn.Conv2d(3, 4, (3, 5), padding=(1, 0)), torch.randn(1, 3, 7, 9)) == 4 * 7 * 5 * (3 * 15)
    # groups=3, stride 2, padding 1: out (2, 12, 5, 5); each output sees 6 / 3 = 2 in-channels * 9 taps
    assert macs_of(nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3), torch.randn(2, 6, 9, 9)) == 2 * 12 * 5 * 5 * (2 * 9)
    # depthwise with dilation 2: out (1, 8, 4, 4), one in-channel * 9 taps each
    assert macs_of(nn.Conv2d(8, 8, 3, groups=8, dilation=2), torch.randn(1, 8, 8, 8)) == 8 * 4 * 4 * 9
    # bias adds are not multiply-accumulates: the same count with and without
    assert macs_of(nn.Conv2d(3, 4, 3, bias=False), torch.randn(1, 3, 5, 5)) == macs_of(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 5, 5)) == 4 * 9 * 27
    # unbatched Conv1d: out (6, 5) from 4 in-channels * 3 taps
    assert macs_of(nn.Conv1d(4, 6, 3, dilation=2), torch.randn(4, 9)) == 6 * 5 * 12


def test_conv_transpose_macs_by_hand() -> None:
    # each of the 2 * 4 * 5 * 5 input elements meets 6 / 2 = 3 out-channels * 9 taps (output_padding adds none)
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, output_padding=1)
    assert macs_of(conv, torch.randn(2, 4, 5, 5)) == 2 * 4 * 5 * 5 * (3 * 9)
    assert macs_of(nn.ConvTranspose1d(3, 5, 4, stride=3), torch.randn(2, 3, 7)) == 2 * 3 * 7 * (5 * 4)


def test_linear_macs_and_params_by_hand() -> None:
    assert count(nn.Linear(10, 7), torch.randn(3, 4, 10)) == (3 * 4 * 10 * 7, 77)
    assert count(nn.Linear(10, 7, bias=False), torch.randn(3, 10)) == (3 * 10 * 7, 70)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 2))
    assert count(mlp, torch.randn(5, 8)) == (5 * (8 * 16 + 16 * 2), 8 * 16 + 16 + 2 * 16 + 16 * 2 + 2)


def test_batched_products_and_attention_by_hand() -> None:
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert macs_of(Call(torch.bmm), (a, b)) == 2 * 3 * 4 * 5
    assert macs_of(Call(lambda x, y: torch.einsum("bij,bjk->bik", x, y)), (a, b)) == 2 * 3 * 4 * 5
    assert macs_of(Call(lambda x, y: torch.baddbmm(torch.zeros(2, 3, 5), x, y)), (a, b)) == 2 * 3 * 4 * 5
    assert macs_of(Call(lambda m, v: m @ v), (torch.randn(3, 4), torch.randn(4))) == 12
    # scaled-dot-product attention: q @ k^T is 5 x 7 scores of 8 MACs, then the scores @ v is 5 x 6 of 7 MACs,
    # for each of 2 * 4 (batch, head) pairs
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 6)
    assert macs_of(Call(F.scaled_dot_product_attention), (q, k, v)) == 2 * 4 * (5 * 7 * 8 + 5 * 6 * 7)


def test_multihead_attention_fast_path_by_hand() -> None:
    # In eval mode without grad nn.MultiheadAttention runs one fused kernel; it is counted from its parts:
    # q, k, v projections (E x E each per token), q @ k^T and weights @ v (L * L * E each), output projection.
    E, L, B = 16, 5, 2
    expected = B * (3 * L * E * E + 2 * L * L * E + L * E * E)
    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(E, 4, batch_first=True)

        def forward(self, t):
            return self.mha(t, t, t, need_weights=False)[0]

    x = torch.randn(B, L, E)
    model = SelfAttention().train()  # counted in eval mode, as Torch-Pruning counts: the fused kernel runs
    assert macs_of(model, x) == expected
    assert model.training
    layer = nn.TransformerEncoderLayer(E, 4, dim_feedforward=32, batch_first=True)
    assert macs_of(layer, x) == expected + B * L * 2 * E * 32


def test_recurrent_layers_by_hand() -> None:
    # every token meets the input and hidden weight matrices of every layer and direction once
    x = torch.randn(2, 5, 16)
    tokens = 2 * 5
    lstm = nn.LSTM(16, 8, batch_first=True)
    assert macs_of(lstm, x) == tokens * (4 * 8 * 16 + 4 * 8 * 8)
    bi = nn.LSTM(16, 8, num_layers=2, bidirectional=True, batch_first=True)
    assert macs_of(bi, x) == tokens * 2 * (4 * 8 * 16 + 4 * 8 * 8) + tokens * 2 * (4 * 8 * 16 + 4 * 8 * 8)
    gru = nn.GRU(16, 8)
    assert macs_of(gru, x) == tokens * (3 * 8 * 16 + 3 * 8 * 8)


def test_kernels_only_cuda_runs_are_counted_on_meta_tensors() -> None:
    aten = torch.ops.aten
    B, L, Lk, H, E = 2, 5, 7, 3, 8

    def meta(*shape):
        return torch.empty(*shape, device="meta")

    attention = B * H * L * Lk * (E + E)
    flash = Call(lambda q, k, v: aten._flash_attention_forward(q, k, v, None, None, L, Lk, 0.0, False, False)[0])
    assert macs_of(flash, (meta(B, L, H, E), meta(B, Lk, H, E), meta(B, Lk, H, E))) == attention
    # packed sequences of 2 and 3 queries against 4 and 1 keys: the offsets are values, so this one is
    # counted by the real pass (on meta tensors, with the offsets on the CPU)
    offsets_q, offsets_k = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 4, 5], dtype=torch.int32)
    packed = Call(lambda q, k, v, cq, ck: aten._flash_attention_forward(q, k, v, cq, ck, 3, 4, 0.0, False, False)[0])
    assert macs_of(packed, (meta(5, H, E), meta(5, H, E), meta(5, H, E), offsets_q, offsets_k)) == H * 2 * E * (2 * 4 + 3 * 1)
    sdpa_cuda = Call(lambda q, k, v: aten._scaled_dot_product_efficient_attention(q, k, v, None, False)[0])
    assert macs_of(sdpa_cuda, (meta(B, H, L, E), meta(B, H, Lk, E), meta(B, H, Lk, E))) == attention
    weights = [meta(32, 16), meta(32, 8), meta(32), meta(32)]
    cudnn_lstm = Call(lambda x, h, c: aten._cudnn_rnn(x, weights, 4, None, h, c, 2, 8, 0, 1, False, 0.0, False, False, [], None)[0])
    assert macs_of(cudnn_lstm, (meta(5, 2, 16), meta(1, 2, 8), meta(1, 2, 8))) == 5 * 2 * (32 * 16 + 32 * 8)


# --- parameters -------------------------------------------------------------------


def test_tied_weights_are_counted_once() -> None:
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.block = nn.Linear(16, 16)
            self.head = nn.Linear(16, 100)
            self.head.weight = self.embed.weight  # tied

        def forward(self, ids):
            return self.head(self.block(self.block(self.embed(ids))))  # block applied twice

    macs, params = count(TiedLM(), torch.randint(0, 100, (2, 3)))
    assert params == 100 * 16 + (16 * 16 + 16) + 100
    assert macs == 2 * 3 * (16 * 16 * 2 + 16 * 100)


# --- against torch.utils.flop_counter ------------------------------------------------


def reference_macs(model: nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's FLOPs / 2 on the unfused path, which it can see into.

    With grad off, nn.MultiheadAttention runs one fused kernel that FlopCounterMode does not count
    (ViT-B/16 would lose a third of its MACs), and on CPU the flash SDPA kernel is not counted
    either; with grad on and the math backend both decompose into the mm / bmm it counts.
    """
    with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    "name, kwargs, size",
    [("resnet18", {}, 112), ("mobilenet_v3_small", {}, 112), ("vit_b_16", {"image_size": 64}, 64)],
)
def test_torchvision_models_agree_with_flop_counter(name: str, kwargs: dict, size: int) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    macs, params = count(model, x)
    expected = reference_macs(model, x)
    assert expected > 0
    assert abs(macs - expected) <= 0.01 * expected, (name, macs, expected)
    assert params == sum(p.numel() for p in model.parameters())


# --- the model is left as it was ------------------------------------------------------


def small_convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(8, 8, 3, groups=2), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def snapshot(model: nn.Module) -> tuple[dict, list[bool]]:
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def assert_unchanged(model: nn.Module, before: tuple[dict, list[bool]]) -> None:
    state, flags = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(after[key], value), key
    assert [m.training for m in model.modules()] == flags


def test_model_is_left_as_it_was() -> None:
    model = small_convnet().train()
    model[5].eval()  # a mixed model: one BatchNorm already frozen
    bn = model[1]
    bn.running_mean.uniform_()
    before = snapshot(model)
    x = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    macs, _, layer_macs, _ = count(model, x, layer_wise=True)
    assert macs == 2 * (8 * 64 * 27 + 8 * 36 * 36 + 8 * 4)
    assert_unchanged(model, before)
    assert int(bn.num_batches_tracked) == 0 and model.training and not model[5].training
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(hooks for m in model.modules() for hooks in (m._forward_hooks, m._forward_pre_hooks))


class SideEffects(nn.Module):
    """A forward that writes into a buffer and stores an attribute; optionally needs real values."""

    def __init__(self, needs_values: bool):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("calls", torch.zeros(()))
        self.shared = nn.Module()
        self.shared.register_buffer("calls", self.calls)  # one buffer under two names
        self.needs_values = needs_values

    def forward(self, x):
        self.calls += 1
        self.shared.calls.add_(1)
        self.last_input = x
        if self.needs_values and float(x.abs().sum()) < 0:  # a value, which fake tensors do not have
            return x
        return self.fc(x) * torch.rand(())


@pytest.mark.parametrize("needs_values", [False, True], ids=["fake-tensors", "real-tensors"])
def test_forward_side_effects_are_undone(needs_values: bool) -> None:
    model = SideEffects(needs_values)
    before = snapshot(model)
    x = torch.randn(5, 4)
    rng = torch.get_rng_state()
    assert count(model, x) == (5 * 4 * 3, 15)
    assert_unchanged(model, before)
    assert float(model.calls) == 0 and model.shared.calls is model.calls and not hasattr(model, "last_input")
    assert torch.equal(torch.get_rng_state(), rng)


def test_meta_model_is_counted_without_weights() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4096, 4096), nn.GELU(), nn.Linear(4096, 10))
        x = torch.empty(3, 4096)
    assert count(model, x) == (3 * 4096 * (4096 + 10), 4096 * 4097 + 10 * 4097)


# --- layer-wise --------------------------------------------------------------------


def test_layer_wise_macs_sum_to_the_total() -> None:
    model = small_convnet().eval()
    macs, params, layer_macs, layer_params = count(model, torch.randn(1, 3, 8, 8), layer_wise=True)
    assert set(layer_macs) == set(model.modules()) == set(layer_params)
    leaves = [m for m in model.modules() if not list(m.children())]
    assert sum(layer_macs[m] for m in leaves) == macs
    assert layer_macs[model] == macs and layer_params[model] == params
    assert layer_macs[model[0]] == 8 * 64 * 27 and layer_macs[model[4]] == 8 * 36 * 36 and layer_macs[model[8]] == 8 * 4
    assert layer_macs[model[1]] == 0 and layer_params[model[1]] == 16
    assert all(isinstance(v, int) for v in [*layer_macs.values(), *layer_params.values()])


def test_layer_wise_counts_a_module_called_twice_and_its_container() -> None:
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.inner(self.inner(x)))

    model = Twice()
    macs, _, layer_macs, _ = count(model, torch.randn(3, 6), layer_wise=True)
    assert layer_macs[model.inner[0]] == layer_macs[model.inner] == 2 * 3 * 36
    assert layer_macs[model.out] == 3 * 12 and macs == 2 * 3 * 36 + 3 * 12 == layer_macs[model]


# --- how inputs are given, and errors ------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.f, self.g = nn.Linear(4, 8), nn.Linear(6, 8)

    def forward(self, x, y, scale=1.0):
        return (self.f(x) + self.g(y)) * scale


def test_inputs_as_tuple_list_dict_or_forward_fn() -> None:
    x, y = torch.randn(2, 4), torch.randn(2, 6)
    expected = 2 * (4 * 8 + 6 * 8)
    model = TwoInputs()
    for inputs in [(x, y), [x, y], {"x": x, "y": y, "scale": 0.5}]:
        assert macs_of(model, inputs) == expected
    assert count(model, {"pair": (x, y)}, forward_fn=lambda m, inp: m(*inp["pair"]))[0] == expected


def test_not_a_module_is_refused() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module as model, got OrderedDict"):
        count(nn.Linear(2, 2).state_dict(), torch.randn(1, 2))
    with pytest.raises(TypeError, match="forward_fn must be a callable"):
        count(nn.Linear(2, 2), torch.randn(1, 2), forward_fn="forward")


def test_inputs_the_model_rejects_are_named() -> None:
    with pytest.raises(ValueError, match=r"could not run Linear on example_inputs=Tensor\(2, 5\): RuntimeError: mat1 and mat2") as info:
        count(nn.Linear(4, 4), torch.randn(2, 5))
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(ValueError, match=r"example_inputs=\{'z': Tensor\(2, 4\)\}: TypeError: .*unexpected keyword argument 'z'"):
        count(TwoInputs(), {"z": torch.randn(2, 4)})
    with pytest.raises(ValueError, match=r"looks like a shape: pass a tensor of that shape instead, e\.g\. torch\.randn\(1, 3, 8, 8\)"):
        count(small_convnet(), (1, 3, 8, 8))


def test_lazy_modules_are_refused_until_initialised() -> None:
    with pytest.raises(ValueError, match=r"lazy parameters that are not initialised yet \(weight, bias\)"):
        count(nn.LazyLinear(3), torch.randn(2, 4))
