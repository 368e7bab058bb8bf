"""MetaPruner's steps toward a MACs or parameter budget: each step's share of the target, and the ratio search.

A mixin of ``MetaPruner`` (the search itself, on a shape-only twin, lives in ``targets``): it uses the pruner's
candidates, selection and groups, and prunes nothing of the real model.
"""
from __future__ import annotations

import warnings
from typing import Any

import attrs

from ..progress import bar
from ..utils import count_ops_and_params
from . import targets
from .arguments import schedule
from .selection import Candidate


class TargetSteps:
    """The target-related part of ``MetaPruner``."""

    def search_target_ratio(self) -> targets.TargetResult:
        """The ratio the next step would use to reach its share of the target, and what it gives; nothing is pruned."""
        if self.target is None:
            raise ValueError("search_target_ratio needs a target: MetaPruner(..., target_macs=... or target_params=...)")
        self.current_step += 1
        try:
            candidates = self._step_candidates()
            return self._search(candidates)
        finally:
            self.current_step -= 1

    def _twin_removal(self) -> tuple[str, ...]:
        """Blocks the shape twin loses before a search: none here (``DepthSteps`` names a pending removal's)."""
        return ()

    def _resolve_target(self, target_macs: Any, target_params: Any) -> targets.Target:
        """The budgets as counts, checked against the model's counts before anything is traced."""
        try:
            macs, params = count_ops_and_params(self.model, self.example_inputs, forward_fn=self.forward_fn)[:2]
        except ValueError as exc:
            raise ValueError(f"a target needs the model's MACs before pruning: {exc}") from exc
        targets.check_shape_only(self.model, self.example_inputs, self.forward_fn, (macs, params))
        if target_macs is not None and macs == 0:
            raise targets.TargetError(f"target_macs={target_macs!r}: the model does no counted multiply-accumulates "
                                      "(convolutions, matrix products, attention); use target_params or pruning_ratio")
        return targets.Target(
            None if target_macs is None else targets.absolute_target(target_macs, macs, "target_macs", "MACs"),
            None if target_params is None else targets.absolute_target(target_params, params, "target_params", "parameters"),
            macs, params)

    def _step_target(self) -> targets.Target:
        """This step's share of the target: the scheduler's shape, from the original counts to the final budget."""
        assert self.target is not None
        shape = schedule(self.scheduler, 1.0, self.iterative_steps)
        progress = shape[self.current_step] / shape[-1] if shape[-1] > 0 else self.current_step / self.iterative_steps
        return self.target.at_step(min(max(progress, 0.0), 1.0))

    def _with_ratio(self, candidates: list[tuple[Candidate, bool]], ratio: float, lower: float,
                    split: int) -> list[tuple[Candidate, bool]]:
        """The candidates with the first ``split`` model-wide ones at ``ratio`` and the other model-wide ones at ``lower``."""
        out, k = [], 0
        for c, model_wide in candidates:
            if model_wide:
                c = attrs.evolve(c, ratio=ratio if k < split else lower)
                k += 1
            out.append((c, model_wide))
        return out

    def _search(self, candidates: list[tuple[Candidate, bool]]) -> targets.TargetResult:
        """The smallest ratio whose prune of a shape twin meets this step's target (the real model is not touched)."""
        target = self._step_target()
        with bar("tracing a shape-only copy", total=1, enabled=self.progress) as tracing:
            removal = self._twin_removal()
            twin = targets.ShapeTwin(self.model, self.example_inputs, self.forward_fn, self.output_transform,
                                     self._unwrapped_parameters, self._customized_pruners, remove_blocks=removal)
            tracing.update()
        if removal:  # a pending remove_layers: the twin lacks those blocks, and the step will not see their groups
            candidates = [(c, model_wide) for c, model_wide in candidates if twin.knows(c.space)]
        counted: dict[bytes, tuple[int, int]] = {}

        def measure(ratio: float, lower: float, split: int) -> tuple[int, int]:
            chosen = self._choose([c for c, _ in self._with_ratio(candidates, ratio, lower, split)])
            key = b"|".join(traced.numpy().tobytes() for _, _, _, traced in chosen)
            if key not in counted:  # a ratio that selects what another did prunes the same: count it once
                with twin.trial():
                    twin.prune(lambda: self._groups_of(twin.translate(chosen), twin.graph), self.keep_loadable)
                    counted[key] = twin.count()
            return counted[key]

        high = min(self.max_pruning_ratio, 0.999)
        with bar("searching the ratio", enabled=self.progress, unit="trial") as searching:
            def shown(ratio: float, macs: int, params: int) -> None:
                searching.set_postfix_str(f"ratio {ratio:.4f}: MACs {targets.format_count(macs)}, "
                                          f"parameters {targets.format_count(params)}")
                searching.update()

            layers = sum(model_wide for _, model_wide in candidates)
            found = targets.search_ratio(measure, target, min(self._target_ratio, high), high, layers, on_probe=shown)
        return attrs.evolve(found, probes=len(counted))

    def _check_target_reached(self) -> None:
        """Count the pruned model; if a group had to stay whole the step may miss its target: say so."""
        assert self.target_result is not None
        macs, params = count_ops_and_params(self.model, self.example_inputs, forward_fn=self.forward_fn)[:2]
        self.target_result = attrs.evolve(self.target_result, macs=macs, params=params)
        if not self.target_result.met:
            warnings.warn(f"step {self.current_step} missed its target ({self.target_result.target.describe()}): it reached "
                          f"MACs {targets.format_count(macs)} and parameters {targets.format_count(params)}, because groups "
                          "were left whole (see the warnings above)", stacklevel=3)
