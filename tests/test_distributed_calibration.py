"""Two gloo processes under torchrun, each calibrating on half the batches, plan exactly as one process on all of them.

Run as a script (``torchrun --standalone --nproc-per-node=2 tests/test_distributed_calibration.py OUT``) this
file is the worker: each rank writes its scores and pruned shapes to ``OUT/rank<k>.pt``.
"""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import pruneframe as tp

N_BATCHES = 6
CRITERIA = ("activation", "taylor", "hessian")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(h)).mean((2, 3)))


def _model() -> Net:
    torch.manual_seed(0)
    return Net().double().eval()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(2 + k % 3, 3, 8, 8, generator=generator, dtype=torch.float64),
             torch.randint(0, 3, (2 + k % 3,), generator=generator)) for k in range(N_BATCHES)]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _per_sample_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")


def plan(criterion: str, batches: list[Any]) -> dict[str, Any]:
    """Calibrate on ``batches``, score every group, prune a step: the scores and the pruned shapes."""
    model = _model()
    importance = {"activation": tp.importance.ActivationImportance(), "taylor": tp.importance.TaylorImportance(),
                  "hessian": tp.importance.HessianImportance()}[criterion]
    pruner = tp.pruner.MetaPruner(model, _batches()[0], importance, pruning_ratio=0.5,  # batches are (images, labels)
                                  global_pruning=True, ignored_layers=[model.fc], forward_fn=lambda m, b: m(b[0]))
    loss_fn = {"activation": None, "taylor": _loss, "hessian": _per_sample_loss}[criterion]
    pruner.calibrate(batches, loss_fn=loss_fn)
    scores = {g[0].dep.target.name: importance(g) for g in pruner.DG.get_all_groups(ignored_layers=[model.fc])}
    pruner.step()
    return {"scores": scores, "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()}}


class Routed(nn.Module):
    """Two experts; a batch says which one it goes to, so a rank may never run one of them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList([nn.Linear(3, 4), nn.Linear(3, 4)])

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        return self.experts[expert](x)


def _routed_batches() -> list[tuple[torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(2)
    return [(torch.randn(3 + k, 3, generator=generator), k % 2) for k in range(4)]  # rank k gets expert k only


def expert_statistics(batches: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    model = Routed()
    imp = tp.importance.ActivationImportance()
    with imp.compute_importance(model), torch.no_grad():
        for x, expert in batches:
            model(x, expert)
    return [imp.statistics(expert) for expert in model.experts]


def _worker(out: Path) -> None:
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    try:
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        mine = _batches()[rank::world]
        results: dict[str, Any] = {c: plan(c, mine) for c in CRITERIA}
        results["experts"] = expert_statistics(_routed_batches()[rank::world])
        torch.save(results, out / f"rank{rank}.pt")
        torch.distributed.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_on_half_the_batches_each_plan_as_one_process_on_all(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=0",
               __file__, str(tmp_path)]
    # its own session, so a timeout ends torchrun *and* its workers
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        log, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        log, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in 240 s:\n{log}")
    assert process.returncode == 0, log
    ranks = [torch.load(tmp_path / f"rank{k}.pt") for k in range(2)]
    alone = {c: plan(c, _batches()) for c in CRITERIA}
    for criterion in CRITERIA:
        expected = alone[criterion]
        for result in ranks:
            assert result[criterion]["shapes"] == expected["shapes"], criterion
            assert result[criterion]["scores"].keys() == expected["scores"].keys()
            for root, scores in expected["scores"].items():
                torch.testing.assert_close(result[criterion]["scores"][root], scores, rtol=0, atol=1e-6)
        assert expected["shapes"] != {k: tuple(v.shape) for k, v in _model().state_dict().items()}  # something was pruned
    for result in ranks:  # each rank ran one expert only, and knows both afterwards
        for got, expected in zip(result["experts"], expert_statistics(_routed_batches())):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    # Results are written and the process group destroyed. Skip interpreter finalization: gloo's C++ worker threads
    # can still hold work objects with Python references then, and freeing them there aborts the process
    # ("terminate called without an active exception", about 1 run in 6 here; pytorch/pytorch#179291 describes it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
