"""Pruned models equal their masked originals (float64, relative error < 1e-9) on architectures with coupling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruneframe.testing import assert_prune_equivalent, check_prune_equivalence, prune_random

TOL = 1e-9


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 5))

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + identity)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1, self.layer2 = Block(8, 8), Block(8, 16, stride=2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Concat(nn.Module):
    """Two branches concatenated, then a tensor concatenated with itself."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 3, padding=1)
        self.mix = nn.Conv2d(10, 8, 1)
        self.twice = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        y = self.mix(torch.cat([self.a(x), F.relu(self.b(x))], dim=1))
        return self.twice(torch.cat([y, y], dim=1))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # depth multiplier 2
        self.bn = nn.BatchNorm2d(16)
        self.pw2 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.pw2(F.relu6(self.bn(self.dw(self.pw1(x)))))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.g, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 8, 3, padding=1, groups=4), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c2(F.relu(self.g(F.relu(self.c1(x)))))


class Shuffle(nn.Module):
    """ShuffleNet's split / concat / channel shuffle, written with view and transpose."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.c2 = nn.Conv2d(8, 6, 1)
        self.shuffle = nn.ChannelShuffle(2)
        self.c3 = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        x = self.c1(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.c3(self.shuffle(self.c2(x)))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.c(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.out(x * s + x)


class PixelShuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Conv2d(3, 16, 3, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.out = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.out(self.ps(self.up(x)))


class Tokens(nn.Module):
    """Conv features as tokens (N, L, C), linear layers on the channel dim, a raw class token."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.fc2(F.gelu(self.fc1(t)))
        return self.head(t[:, 0])


class StepSlicing(nn.Module):
    """Slicing a channel dim with a step picks fixed positions: those channels must stay."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.c4 = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.c1(x)
        return self.c2(y[:, ::2]) + self.c4(F.relu(self.c3(y)))


IMG = torch.randn(2, 3, 8, 8)
CASES = {
    "mlp": (MLP, torch.randn(3, 8)),
    "vgg": (VGGish, IMG),
    "resnet": (ResNetish, IMG),
    "concat": (Concat, IMG),
    "depthwise": (Depthwise, IMG),
    "grouped": (Grouped, IMG),
    "shuffle": (Shuffle, IMG),
    "squeeze-excite": (SqueezeExcite, IMG),
    "pixel-shuffle": (PixelShuffle, IMG),
    "tokens": (Tokens, IMG),
    "step-slicing": (StepSlicing, IMG),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_random_prune_equals_masked_original(name: str, seed: int) -> None:
    factory, x = CASES[name]
    error = assert_prune_equivalent(factory(), x, prune_random(ratio=0.4, seed=seed), tolerance=TOL, seed=seed)
    assert error < TOL


def _sizes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "name, shrinks",
    [
        ("concat", ["a.weight", "b.weight", "mix.weight"]),
        ("depthwise", ["dw.weight", "pw1.weight", "pw2.weight"]),
        ("grouped", ["c1.weight", "g.weight", "c2.weight"]),
        ("shuffle", ["c1.weight", "branch.0.weight", "c2.weight"]),
        ("tokens", ["patch.weight", "cls", "fc1.weight"]),
    ],
)
def test_the_coupled_layers_really_shrink(name: str, shrinks: list[str]) -> None:
    factory, x = CASES[name]
    model = factory()
    before = _sizes(model)
    _, pruned, _ = check_prune_equivalence(model, x, prune_random(ratio=0.5, seed=0))
    after = _sizes(pruned)
    for key in shrinks:
        assert after[key] != before[key], f"{key} kept its shape {before[key]}"
    assert _sizes(model) == before  # the user's model is not touched


def test_step_slicing_keeps_the_sliced_channels() -> None:
    factory, x = CASES["step-slicing"]
    _, pruned, graph = check_prune_equivalence(factory(), x, prune_random(ratio=0.5, seed=0))
    assert pruned.c1.out_channels == 8 and pruned.c2.in_channels == 4
    assert pruned.c3.out_channels < 6  # the independent branch still prunes


def test_input_channels_are_never_pruned() -> None:
    class OnInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.after = nn.Conv2d(3, 6, 1)
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.head(F.relu(self.after(x + self.conv(x))))

    _, pruned, _ = check_prune_equivalence(OnInput(), IMG, prune_random(ratio=0.5, seed=0))
    assert pruned.conv.out_channels == 3 and pruned.conv.in_channels == 3 and pruned.after.in_channels == 3
    assert pruned.after.out_channels == 3  # what does not touch the image still prunes


def test_the_checker_detects_a_wrong_prune() -> None:
    """A check that cannot fail is no check: corrupt one kept weight after an exact prune."""
    step = prune_random(ratio=0.4, seed=0)

    def corrupt(graph, model):
        step(graph, model)
        with torch.no_grad():
            model.c3.weight[0, 0] += 0.5

    error, _, _ = check_prune_equivalence(CASES["shuffle"][0](), IMG, corrupt)
    assert error > 1e-3


def test_the_checker_detects_a_wrong_index_mapping() -> None:
    """Swapping two kept channels of a pruned layer is the symptom of a wrong mapping; it must show."""
    step = prune_random(ratio=0.4, seed=0)

    def swap(graph, model):
        step(graph, model)
        with torch.no_grad():
            w = model.mix.weight
            w[[0, 1]] = w[[1, 0]].clone()

    error, _, _ = check_prune_equivalence(CASES["concat"][0](), IMG, swap)
    assert error > 1e-3
