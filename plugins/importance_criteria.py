"""Built-in importance criteria, registered by name: magnitude (l1, l2), bn_scale, lamp, fpgm, taylor, hessian, activation, random."""
from __future__ import annotations

import functools

from pruneframe import hookimpl
from pruneframe.importance import (
    ActivationImportance,
    BNScaleImportance,
    FPGMImportance,
    HessianImportance,
    LAMPImportance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
)


@hookimpl(trylast=True)
def pruneframe_importances(register):
    register("magnitude", MagnitudeImportance, aliases=["group_magnitude", "group_norm"])
    register("l1", functools.partial(MagnitudeImportance, p=1))
    register("l2", functools.partial(MagnitudeImportance, p=2))
    register("bn_scale", BNScaleImportance)
    register("lamp", LAMPImportance)
    register("fpgm", FPGMImportance)
    register("taylor", TaylorImportance, aliases=["group_taylor"])
    register("hessian", HessianImportance, aliases=["group_hessian", "obd"])
    register("activation", ActivationImportance)
    register("random", RandomImportance)
