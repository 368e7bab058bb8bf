"""Combining member layers' scores per root index (group reductions) and rescaling a group's scores (normalisers)."""
from __future__ import annotations

from typing import Callable, Union

import torch

GROUP_REDUCTIONS = ("mean", "sum", "max", "prod", "first", "gate")  # and None: no reduction, one row per member layer
NORMALIZERS = ("mean", "max", "sum", "standarization", "standardization", "gaussian", "lamp")  # and "sentinel_<q>"
SENTINEL = "sentinel_"

Normalizer = Union[str, Callable[[torch.Tensor], torch.Tensor], None]


def reduce_scores(scores: torch.Tensor, covered: torch.Tensor, how: str | None) -> torch.Tensor:
    """Per root index (column), combine the scores of the members (rows) that cover it; None keeps every row."""
    if how is None:
        return scores
    if how == "sum":
        return scores.sum(0)
    if how == "mean":
        return scores.sum(0) / covered.sum(0).clamp(min=1)
    if how == "max":
        return scores.masked_fill(~covered, float("-inf")).amax(0)
    if how == "prod":
        return scores.masked_fill(~covered, 1.0).prod(0)
    if how == "first":
        first = covered.to(torch.int8).argmax(0)  # the first member, in group order, that covers each root index
        return scores.gather(0, first.unsqueeze(0)).squeeze(0)
    if how == "gate":
        last = covered.shape[0] - 1 - torch.flip(covered, [0]).to(torch.int8).argmax(0)  # the last member covering each
        return scores.gather(0, last.unsqueeze(0)).squeeze(0)
    raise ValueError(f"unknown group_reduction {how!r}; use one of {', '.join(GROUP_REDUCTIONS)}")


def lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP: each score divided by the sum of every score at least as large (itself included).

    Equal scores share one denominator, so they stay equal.
    """
    ordered = torch.sort(scores).values
    at_least = torch.flip(torch.cumsum(torch.flip(ordered, [0]), 0), [0])  # at_least[k] = sum(ordered[k:])
    denominator = at_least[torch.searchsorted(ordered, scores, side="left")]
    return torch.where(denominator != 0, scores / torch.where(denominator != 0, denominator, 1), torch.zeros_like(scores))


def _divide(scores: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    return scores / by if bool(by != 0) else scores  # all-zero scores stay zero rather than becoming NaN


def sentinel_quantile(how: str) -> float:
    """The q of a "sentinel_<q>" normaliser (0 <= q <= 1), or ValueError naming the spelling."""
    try:
        q = float(how[len(SENTINEL):])
    except ValueError:
        q = float("nan")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"normalizer {how!r}: write 'sentinel_<q>' with q between 0 and 1, e.g. 'sentinel_0.5' (the median)")
    return q


def normalize(scores: torch.Tensor, how: Normalizer) -> torch.Tensor:
    """Rescale ``scores``; a 2-D tensor (``group_reduction=None``) is normalised as a whole, as Torch-Pruning does."""
    if how is None:
        return scores
    if scores.dim() > 1 and not callable(how):
        return normalize(scores.flatten(), how).view_as(scores)
    if callable(how):
        out = how(scores)
        if not isinstance(out, torch.Tensor) or out.shape != scores.shape:
            raise ValueError(f"the normalizer {how!r} must return a tensor of shape {tuple(scores.shape)}, got {out!r}")
        return out
    if how == "sum":
        return _divide(scores, scores.sum())
    if how == "mean":
        return _divide(scores, scores.mean())
    if how == "max":
        return _divide(scores, scores.max())
    if how in ("standarization", "standardization"):  # min-max scaling to [0, 1], as Torch-Pruning spells and means it
        low, high = scores.min(), scores.max()
        return (scores - low) / (high - low) if bool(high > low) else torch.zeros_like(scores)
    if how == "gaussian":
        centred = scores - scores.mean()
        std = scores.std() if scores.numel() > 1 else scores.new_zeros(())
        return centred / std if bool(std > 0) else centred
    if how == "lamp":
        return lamp(scores)
    if isinstance(how, str) and how.startswith(SENTINEL):  # divided by the score at quantile q (its k-th smallest)
        k = min(int(sentinel_quantile(how) * scores.numel()), scores.numel() - 1)
        return _divide(scores, torch.sort(scores).values[k])
    raise ValueError(f"unknown normalizer {how!r}; use one of {', '.join(NORMALIZERS)}, 'sentinel_<q>', None or a function")


def check_options(group_reduction: str | None, normalizer: Normalizer) -> None:
    if group_reduction is not None and group_reduction not in GROUP_REDUCTIONS:
        raise ValueError(f"unknown group_reduction {group_reduction!r}; use one of {', '.join(GROUP_REDUCTIONS)} or None")
    if isinstance(normalizer, str) and normalizer.startswith(SENTINEL):
        sentinel_quantile(normalizer)
    elif not (normalizer is None or callable(normalizer) or normalizer in NORMALIZERS):
        raise ValueError(f"unknown normalizer {normalizer!r}; use one of {', '.join(NORMALIZERS)}, 'sentinel_<q>', None "
                         "or a function")
