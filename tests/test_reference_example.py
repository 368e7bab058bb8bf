"""The reference use of the graph API runs unchanged, and its final assert holds."""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / "docs" / "examples" / "custom_layer.py", ROOT.parent / "shared" / "examples" / "custom_layer.py"]


@pytest.mark.parametrize("script", EXAMPLES, ids=["docs-copy", "shared"])
def test_reference_example_runs_unchanged(script: Path, tmp_path: Path) -> None:
    if not script.exists():
        pytest.skip(f"{script} is not beside this checkout")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # the printed group names the three coupled layers, and the pruned model shows 253 features
    assert "customized_layer" in result.stdout and "fc2" in result.stdout
    assert "CustomizedLayer(in_dim=253)" in result.stdout
    assert "torch.Size([1, 10])" in result.stdout


def test_a_torch_pruning_script_runs_with_only_the_import_changed(tmp_path: Path) -> None:
    """docs/examples/prune_resnet18.py is Torch-Pruning's API (MetaPruner, importance, utils, state_dict)."""
    script = ROOT / "docs" / "examples" / "prune_resnet18.py"
    assert "import pruneframe as tp" in script.read_text()
    out = tmp_path / "r18.pth"
    result = subprocess.run([sys.executable, str(script), str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "MACs:" in result.stdout and "Params:" in result.stdout and "identical outputs" in result.stdout
    import torch
    import torchvision

    import pruneframe as tp

    saved = torch.load(out, weights_only=True)
    model = tp.load_state_dict(torchvision.models.resnet18(weights=None), state_dict=saved)
    params = sum(p.numel() for p in model.parameters())
    assert params < 0.5 * 11_689_512  # ResNet-18 has 11.69 M parameters before pruning
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c % 8 == 0 for c in convs)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
