"""Layer pruner for Hugging Face's ``Conv1D`` (GPT-2's projections): a Linear whose weight is stored (in, out)."""
from __future__ import annotations

from torch import nn

from pruneframe import DeclarativeLayerPruner, TensorDims


class Conv1DPruner(DeclarativeLayerPruner):
    """Prunes ``transformers.pytorch_utils.Conv1D``: ``y = x @ weight + bias`` with ``weight`` of shape (nx, nf).

    Output features are weight *columns* and bias entries, input features weight
    rows; ``nf`` / ``nx`` hold the two widths (``forward`` reshapes with ``nf``,
    so it must follow). Features are the last dimension of input and output.
    It ``acts_like`` ``nn.Linear``: MetaPruner roots and importance criteria
    take it wherever they take a Linear.
    """

    acts_like = (nn.Linear,)

    tensors = (TensorDims("weight", out=1, in_=0), TensorDims("bias", out=0))
    out_attrs = ("nf",)
    in_attrs = ("nx",)
    output_dim = -1
    input_dim = -1
