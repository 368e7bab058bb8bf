"""tp.utils beyond counting: benchmarks, the print tool, flatten_as_list and the graph drawings."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import pruneframe as tp
from pruneframe.utils import benchmark


class Slow(nn.Module):
    """Sleeps a known time per call; counts its calls and records its training flag each time."""

    def __init__(self, seconds: float = 0.002):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.seconds, self.calls, self.modes = seconds, 0, []

    def forward(self, x):
        import time

        time.sleep(self.seconds)
        self.calls += 1
        self.modes.append(self.training)
        return self.fc(x)


# --- benchmarks ------------------------------------------------------------------------------------------------


def test_latency_fps_and_throughput_measure_the_runs() -> None:
    model = Slow().train()
    x = torch.randn(8, 4)
    mean, std = benchmark.measure_latency(model, x, repeat=5, warmup=2)
    assert model.calls == 7 and set(model.modes) == {False}  # warmup + repeat runs, all in eval mode
    assert model.training and model.fc.training  # the training flags are back
    assert 2.0 <= mean < 200 and std >= 0
    fps = benchmark.measure_fps(model, x, repeat=3, warmup=0)
    assert 5 < fps <= 500  # at most one run per 2 ms
    throughput = benchmark.measure_throughput(model, x, repeat=3, warmup=0)
    assert 8 * 5 < throughput <= 8 * 500  # batch 8 per run
    assert benchmark.measure_latency(model, x, repeat=1, warmup=0)[1] == 0.0


def test_run_fn_and_dict_inputs() -> None:
    model = Slow(0)
    seen = []

    def run_fn(m, inputs):
        seen.append(sorted(inputs))
        loss = m(inputs["x"]).sum()
        loss.backward()
        return loss

    benchmark.measure_latency(model, {"x": torch.randn(2, 4)}, repeat=2, warmup=1, run_fn=run_fn)
    assert seen == [["x"]] * 3 and model.fc.weight.grad is not None
    assert benchmark.measure_throughput(model, {"x": torch.randn(6, 4)}, repeat=1, warmup=0) > 0


def test_memory_on_the_cpu_is_the_peak_resident_memory_of_the_run() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the CPU peak is read from /proc")
    # a fresh interpreter: memory this test session freed earlier could serve the allocation without growing
    code = textwrap.dedent("""
        import torch
        from torch import nn
        from pruneframe.utils import benchmark

        class Big(nn.Module):
            def forward(self, x):
                return torch.ones(128 * 2**20 // 4).sum() + x  # 128 MiB allocated and freed inside the run

        def resident():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

        before = resident()
        peak = benchmark.measure_memory(Big(), torch.zeros(1))
        after = resident()
        small = benchmark.measure_memory(nn.Identity(), torch.zeros(1))
        print(before, peak, after, small)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    before, peak, after, small = map(int, out.stdout.split())
    assert peak >= before + 120 * 2**20  # the 128 MiB came during the run...
    assert after < peak - 100 * 2**20  # ...and went
    assert small < peak - 100 * 2**20  # a run that allocates nothing peaks at what is resident


def test_bad_benchmark_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="repeat=0"):
        benchmark.measure_latency(nn.Linear(2, 2), torch.randn(1, 2), repeat=0)
    with pytest.raises(ValueError, match="warmup=-1"):
        benchmark.measure_fps(nn.Linear(2, 2), torch.randn(1, 2), warmup=-1)
    with pytest.raises(TypeError, match="run_fn must be a callable"):
        benchmark.measure_latency(nn.Linear(2, 2), torch.randn(1, 2), run_fn="model")
    with pytest.raises(TypeError, match="torch.nn.Module, not dict"):
        benchmark.measure_memory({}, torch.randn(1, 2))
    with pytest.raises(ValueError, match="no tensor with a dim 0"):
        benchmark.measure_throughput(nn.Identity(), torch.tensor(1.0), repeat=1, warmup=0)
    meta = nn.Linear(2, 2, device="meta")
    with pytest.raises(ValueError, match="meta device"):
        benchmark.measure_latency(meta, torch.randn(1, 2, device="meta"), repeat=1, warmup=0)


# --- print tool and flatten_as_list -----------------------------------------------------------------------------


def test_print_tool_shows_layers_that_appeared_and_went() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    tp.utils.print_tool.before_pruning(model)
    model.append(nn.Tanh())
    assert tp.utils.print_tool.after_pruning(model, do_print=False).splitlines()[3:5] == [
        "  (2): Linear(in_features=4, out_features=2, bias=True)", "=> (3): Tanh()"]
    tp.utils.print_tool.before_pruning(model)
    del model[3]
    del model[1]
    assert tp.utils.print_tool.after_pruning(model, do_print=False).splitlines() == [
        "Sequential(",
        "  (0): Linear(in_features=3, out_features=4, bias=True)",
        "  (1): ReLU() => (1): Linear(in_features=4, out_features=2, bias=True)",
        "  (2): Linear(in_features=4, out_features=2, bias=True) =>",
        "  (3): Tanh() =>",
        ")",
    ]
    with pytest.raises(ValueError, match="before_pruning"):
        tp.utils.print_tool.after_pruning(model)


def test_flatten_as_list_keeps_every_leaf_in_order() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    assert tp.utils.flatten_as_list(a) == [a]
    assert tp.utils.flatten_as_list(([a, {"k": b}], None, "s")) == [a, b, None, "s"]
    assert tp.utils.flatten_as_list(3) == [3]


# --- drawings ---------------------------------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)
        self.tail = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.conv1(x)
        return self.tail(torch.relu(self.head(self.bn(self.conv2(y)) + y)))


def _graph():
    model = Residual()
    return model, tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 4, 4))


def test_drawings_show_the_coupling_of_a_residual_block(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    model, DG = _graph()
    order = [n.module for n in DG.module2node.values()]
    k = {m: order.index(m) for m in (model.conv1, model.conv2, model.bn, model.head, model.tail)}

    fig, ax = tp.utils.draw_computational_graph(DG, tmp_path / "comp.png", title=None, figsize=(2, 2), dpi=20)
    comp = torch.as_tensor(ax.images[0].get_array())
    assert (tmp_path / "comp.png").stat().st_size > 0 and comp.shape == (5, 5)
    assert comp[k[model.conv1], k[model.conv2]] == 1 and comp[k[model.conv1], k[model.head]] == 1  # conv1's outputs reach both
    assert comp[k[model.conv1], k[model.bn]] == 1  # and the bn's inputs, through the add
    assert comp[k[model.head], k[model.tail]] == comp[k[model.tail], k[model.head]] == 1  # symmetric
    assert comp[k[model.conv1], k[model.tail]] == 0  # head's outputs are not conv1's: tail reads only those

    fig, ax = tp.utils.draw_dependency_graph(DG, tmp_path / "dep.png", title="deps", figsize=(2, 2), dpi=20)
    dep = torch.as_tensor(ax.images[0].get_array())
    out, inp = (lambda m: 2 * k[m] + 1), (lambda m: 2 * k[m])
    assert dep.shape == (10, 10) and dep[out(model.conv1), inp(model.head)] > 0 and dep[out(model.conv1), out(model.conv2)] > 0
    assert dep[inp(model.bn), out(model.bn)] > 0  # a batch norm's inputs and outputs are one
    assert dep[inp(model.conv1), out(model.conv1)] == 0  # a conv's are not
    assert ax.get_title() == "deps"

    fig, ax = tp.utils.draw_groups(DG, tmp_path / "groups.png", title=None, figsize=(2, 2), dpi=20)
    groups = torch.as_tensor(ax.images[0].get_array())
    assert groups[out(model.conv1), out(model.conv2)] > 0 and groups[out(model.conv1), inp(model.conv1)] == 0
    assert groups[out(model.head), inp(model.tail)] > 0
    assert groups[out(model.tail)].sum() == 0  # the model's output channels form no prunable group


def test_drawing_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch) -> None:
    _, DG = _graph()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    for draw in (tp.utils.draw_computational_graph, tp.utils.draw_dependency_graph, tp.utils.draw_groups):
        with pytest.raises(ImportError, match="pip install matplotlib"):
            draw(DG, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_drawing_bad_arguments_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="build_dependency"):
        tp.utils.draw_groups(tp.DependencyGraph(), tmp_path / "x.png")
    _, DG = _graph()
    with pytest.raises(FileNotFoundError, match="nosuch"):
        tp.utils.draw_groups(DG, tmp_path / "nosuch" / "x.png")
    with pytest.raises(TypeError, match="save_as must be a file path"):
        tp.utils.draw_groups(DG, 3)
