"""`pruneframe inspect` and `pruneframe graph`: groups and kept-whole sides without pruning; dot and Mermaid that parse."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

import pruneframe.tracing
from pruneframe.app.inspect_commands import add_subcommands

MODELS = '''
import torch
from torch import nn


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.add_module('we"ird<1>', nn.Conv2d(10, 10, 1))  # a name dot and Mermaid must escape
        self.mix = nn.Conv2d(10, 5, 1)

    def forward(self, x):
        return self.mix(getattr(self, 'we"ird<1>')(torch.cat([self.a(x), self.b(x)], dim=1)))


class SortNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.sort(self.a(x), dim=3).values)))


def two_branch():
    return TwoBranch(), torch.randn(1, 3, 4, 4)


def sort_net():
    return SortNet(), torch.randn(1, 3, 4, 4)
'''


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pruneframe")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


# --- structural checks of the two formats --------------------------------------------------------
DOT_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def check_dot(text: str) -> dict[str, list[str]]:
    """Balanced braces outside strings, every string closed, every edge between declared nodes; {cluster: node labels}."""
    assert text.startswith('digraph "') and text.rstrip().endswith("}")
    bare = DOT_STRING.sub('""', text)
    assert '"' not in bare.replace('""', ""), "an unterminated or badly escaped string"
    depth = 0
    for char in bare:
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    node = re.compile(r'^    "(\w+)" \[label=("(?:[^"\\]|\\.)*")\];$')
    edge = re.compile(r'^  "(\w+)" -> "(\w+)"( \[.*\])?;$')
    clusters: dict[str, list[str]] = {}
    declared: set[str] = set()
    current = None
    for line in text.splitlines()[3:-1]:
        if m := re.match(r"^  subgraph (cluster_\d+) \{$", line):
            current = m.group(1)
            clusters[current] = []
        elif m := node.match(line):
            assert current is not None and m.group(1) not in declared
            declared.add(m.group(1))
            clusters[current].append(m.group(2)[1:-1])
        elif m := edge.match(line):
            assert m.group(1) in declared and m.group(2) in declared, line
        else:
            assert line == "  }" or line.startswith("    label="), line
    return clusters


def check_mermaid(text: str) -> dict[str, list[str]]:
    """subgraph/end balanced, ids plain words declared once, labels quoted with no raw quote, every edge between nodes."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TB"
    label = r'"([^"]*)"'
    clusters: dict[str, list[str]] = {}
    declared: set[str] = set()
    current = None
    for line in lines[1:]:
        if m := re.match(rf"^  subgraph (\w+) \[{label}\]$", line):
            assert current is None and m.group(1) not in declared  # no nesting; ids unique
            current = m.group(1)
            declared.add(current)
            clusters[current] = []
        elif line == "  end":
            assert current is not None
            current = None
        elif m := re.match(rf"^    (\w+)\[{label}\]$", line):
            assert current is not None and m.group(1) not in declared
            declared.add(m.group(1))
            clusters[current].append(m.group(2))
        elif m := re.match(r"^  style (\w+) stroke:#[0-9a-f]{6}$", line):
            assert m.group(1) in clusters
        elif m := re.match(r"^  (\w+) (-->|---|-\.->) (\w+)$", line):
            nodes = {n for members in clusters.values() for n in members}
            assert m.group(1) in declared - set(clusters) and m.group(3) in declared - set(clusters), line
            assert nodes
        else:
            raise AssertionError(f"not Mermaid flowchart syntax: {line!r}")
    assert current is None
    return clusters


# --- inspect ----------------------------------------------------------------------------------
def test_inspect_resnet18_json_lists_groups_and_kept_sides(capsys) -> None:
    assert run(["inspect", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--ignore", "layer4.1.conv2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["model"] == "torchvision:resnet18" and found["inputs"] == "1x3x32x32"
    statuses = [g["status"] for g in found["groups"]]
    assert statuses == ["prunable"] * 11 + ["blocked"] * 3
    first = found["groups"][0]
    assert (first["root"], first["kind"], first["channels"], first["blocks"], len(first["members"])) == ("conv1", "out", 64, 64, 10)
    assert {"name": "layer1.0.conv1", "type": "Conv2d", "kind": "in", "channels": 64} in first["members"]
    ignored = next(g for g in found["groups"] if g["root"] == "layer4.0.conv2")
    assert ignored["status"] == "blocked" and ignored["reasons"] == ["layer4.1.conv2 is an ignored layer"]
    kept = {(r["name"], r["kind"]): r["reasons"] for r in found["kept_whole"]}
    assert kept[("fc", "out")] == ["it reaches a model output"] and kept[("fc", "in")] == ["layer4.1.conv2 is an ignored layer"]
    assert kept[("conv1", "in")] == ["it comes from a model input"] and len(kept) == 10
    assert found["unsupported_ops"] == {}


def test_inspect_text_names_an_unknown_op_as_docs_inspecting_shows(models: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(models.parent)
    with pytest.warns(pruneframe.UnsupportedOpWarning):
        assert run(["inspect", "models.py:sort_net"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("models.py:sort_net (example input 1x3x4x4): 3 layers and parameters, 5 groups (1 prunable, 4 blocked)\n")
    doc = (Path(__file__).resolve().parents[1] / "docs" / "inspecting.md").read_text()
    shown = re.search(r"it prints:\n\n```text\n(.*?)```", doc, re.S)
    assert shown is not None and shown.group(1) == out
    assert re.search(r"\n 0 +\| b +\| Conv2d \| out +\| 8 +\| 8 +\| prunable \| 2 +\| out: b; in: c\n", out), out
    assert "  it reaches aten.sort.default, which no op plugin handles (1):\n    a (out)\n" in out
    assert "  it comes out of aten.sort.default, which no op plugin handles (1):\n    b (in)\n" in out
    assert out.endswith("Ops no plugin handles (write an op plugin to prune across them): aten.sort.default (x1)\n")


def test_inspect_a_tiny_hugging_face_config(tmp_path: Path, capsys) -> None:
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=100).save_pretrained(tmp_path)
    with pytest.warns(UserWarning):  # without pruneframe-transformers installed, the graph says what it cannot keep in step
        assert run(["inspect", f"hf:{tmp_path}", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    groups = {(g["root"], g["kind"]): g for g in found["groups"]}
    q = groups[("layers.0.self_attn.q_proj", "out")]
    # grouped-query attention: each key/value head goes with its two query heads, so the 64 channels are 2 blocks
    assert (q["channels"], q["blocks"], q["status"]) == (64, 2, "prunable")
    assert {m["name"] for m in q["members"]} == {f"layers.0.self_attn.{p}_proj" for p in "qkvo"}
    # LlamaModel returns its hidden states: the hidden size reaches the output and stays
    kept = {(r["name"], r["kind"]): r["reasons"] for r in found["kept_whole"]}
    assert kept[("embed_tokens", "out")] == ["it reaches a model output"] and kept[("norm.weight", "out")] == ["it reaches a model output"]


def test_each_command_traces_the_model_once(models: Path, monkeypatch, capsys) -> None:
    calls = []
    real = pruneframe.tracing.trace

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pruneframe.tracing, "trace", counted)
    assert run(["inspect", f"{models}:two_branch"]) == 0 and len(calls) == 1
    assert run(["graph", f"{models}:two_branch", "--format", "mermaid"]) == 0 and len(calls) == 2
    capsys.readouterr()


def test_bad_input_gets_a_message_and_exit_2(models: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    for argv, message in [
        (["inspect", f"{models}:two_branch", "--ignore", "a,nosuch"], "--ignore nosuch: no such layer in"),
        (["inspect", "nosuch:thing"], "unknown source 'nosuch'"),
        (["graph", "torchvision:resnet18", "--input-shape", "1,7"], "could not run ResNet on example_inputs=Tensor(1, 7)"),
    ]:
        assert run(argv) == 2, argv
        assert message in capsys.readouterr().err, argv

    import pruneframe.app.model_sources as sources

    def never(*args, **kwargs):
        raise AssertionError("a model was built before --out was checked")

    monkeypatch.setattr(sources, "build", never)
    assert run(["graph", f"{models}:two_branch", "--out", str(tmp_path / "missing" / "g.dot")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert run(["graph", f"{models}:two_branch", "--out", str(tmp_path)]) == 2
    assert "that is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(["graph", f"{models}:two_branch", "--format", "svg"])
    assert "invalid choice: 'svg'" in capsys.readouterr().err


# --- graph --------------------------------------------------------------------------------------
def test_graph_dot_has_a_cluster_per_group_and_escapes_names(models: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "g.dot"
    assert run(["graph", f"{models}:two_branch", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}: 6 groups, 9 layer sides, 8 edges (dot)\n"
    text = out.read_text()
    clusters = check_dot(text)
    assert len(clusters) == 6
    # the cat splits the weird layer's input between the groups of a and b
    assert clusters["cluster_0"] == ["a (Conv2d)\\nout 4", 'we\\"ird<1> (Conv2d)\\nin 4 of 10']
    assert clusters["cluster_1"] == ["b (Conv2d)\\nout 6", 'we\\"ird<1> (Conv2d)\\nin 6 of 10']
    assert 'label="group 5: mix out, 5 channels, blocked: it reaches a model output"' in text
    assert '"g0n0" -> "g0n1";' in text  # a's output feeds its share of the weird layer's input
    assert '"g0n1" -> "g2n4" [style=dotted' in text  # and through the layer to its output side


def test_graph_mermaid_has_a_subgraph_per_group_and_escapes_names(models: Path, capsys) -> None:
    assert run(["graph", f"{models}:two_branch", "--format", "mermaid"]) == 0
    text = capsys.readouterr().out
    clusters = check_mermaid(text)
    assert len(clusters) == 6
    assert clusters["g0"] == ["a (Conv2d)<br/>out 4", "we#quot;ird#lt;1#gt; (Conv2d)<br/>in 4 of 10"]
    assert 'g0n1["we#quot;ird#lt;1#gt; (Conv2d)<br/>in 4 of 10"]' in text
    assert "  g0n0 --> g0n1\n" in text and "  g0n1 -.-> g2n4\n" in text


@pytest.mark.parametrize("fmt", ["dot", "mermaid"])
def test_graph_of_resnet18(fmt: str, capsys) -> None:
    assert run(["graph", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--format", fmt]) == 0
    text = capsys.readouterr().out
    clusters = (check_dot if fmt == "dot" else check_mermaid)(text)
    assert len(clusters) == 14
    edges = re.findall(r" -> | --> | --- | -\.-> ", text)
    assert len(edges) == 69  # 51 couplings (outputs to inputs, residual adds) and 18 ways through a layer


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz' dot is not installed")
def test_graphviz_renders_the_dot(models: Path, tmp_path: Path, capsys) -> None:
    for spec in (f"{models}:two_branch", "torchvision:resnet18"):
        out = tmp_path / "g.dot"
        assert run(["graph", spec, "--input-shape", "1,3,32,32", "--out", str(out)]) == 0
        done = subprocess.run(["dot", "-Tsvg", str(out)], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and "<svg" in done.stdout and not done.stderr, done.stderr
    capsys.readouterr()


def test_the_subcommands_plug_into_any_parser() -> None:
    parser = argparse.ArgumentParser(prog="pruneframe")
    sub = parser.add_subparsers(dest="command")
    add_subcommands(sub)
    args = parser.parse_args(["graph", "torchvision:resnet18", "--ignore", "fc", "--ignore", "layer1.0.conv1,conv1"])
    assert (args.command, args.format, args.out, args.ignore) == ("graph", "dot", None, ["fc", "layer1.0.conv1,conv1"])
    with pytest.raises(SystemExit):
        parser.parse_args(["inspect", "torchvision:resnet18", "--input-shape", "1,0"])
    assert textwrap.dedent(sub.choices["inspect"].format_help()).count("--json") >= 1
