"""Checkpoints larger than memory: models read lazily from safetensors, merged and operated on block by block,
written shard by shard (DESIGN §7b).

>>> from hetsurgery import stream
>>> sorted(n for n in stream.__all__ if not n[0].isupper())
['apply', 'merge']
"""

from hetsurgery.stream.checkpoint import Checkpoint
from hetsurgery.stream.driver import StreamResult, apply, merge
from hetsurgery.stream.model import StreamedModel, Values
from hetsurgery.stream.segments import Segmented

__all__ = ["Checkpoint", "Segmented", "StreamResult", "StreamedModel", "Values", "apply", "merge"]
