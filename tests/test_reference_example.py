"""The reference use of the graph API runs unchanged, and its final assert holds."""
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_main_job_prunes_and_saves(tmp_path: Path) -> None:
    out = tmp_path / "r18.pth"
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / "prune_resnet18.py"), str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "MACs:" in result.stdout and "Params:" in result.stdout
    import torch

    model = torch.load(out, weights_only=False)
    params = sum(p.numel() for p in model.parameters())
    assert params < 0.6 * 11_689_512  # ResNet-18 has 11.69 M parameters before pruning
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
