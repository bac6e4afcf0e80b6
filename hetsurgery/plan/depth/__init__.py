"""Depth alignment of models with different numbers of units: streamed linear CKA, the CLA / SMA / LMA
dynamic programmes, balancing (``add`` / ``merge``) and the serialisable ``DepthPlan``.

Everything here works on plain tensors and numbers; the graphs' units and stages come from elsewhere.
"""

from hetsurgery.plan.depth.cka import CKAError, StreamingCKA, linear_cka, width_cost

__all__ = [
    "CKAError",
    "StreamingCKA",
    "linear_cka",
    "width_cost",
]
