"""``InsertPostNormBlock``: a block that approximately computes its input, for stacks that normalise after their
residual adds (post-norm, ``LayerNorm(x + f(x))``: BERT, the original Transformer).

No block of a post-norm stack computes its input: even with its branches zero, ``LayerNorm(x + 0)`` normalises
the stream again. But the stream a post-norm block reads is itself a norm's output, ``x = γ ⊙ ν(h) + β`` (``ν``
the normalisation, ``γ``, ``β`` the affine of the norm that ends the block before), and normalising it again
gives back nearly the same thing. The inserted block is a copy of the block right before it (as
``InsertZeroResidual``: the same layers and inner weights) with every residual branch's last layer zero, every
norm after an add but the last set to the identity affine (``ν``), and the last one keeping the copied block's
affine, the one that made the stream:

    block(x) = γ ⊙ ν(ν(x)) + β = γ ⊙ ν(x) + β ≈ γ ⊙ ν(h) + β = x.

It is exact (up to the norm's ``eps``) when ``γ`` is one number for every channel and ``β`` too (a freshly
initialised model: γ = 1, β = 0), since ``ν(c ν(h) + b) = ν(h)``; otherwise ``ν(x)`` differs from ``ν(h)`` by
how unevenly ``γ`` and ``β`` spread the channels. So the pass is not ``exact`` (``Pipeline`` does not demand the
same function); depth balancing measures what it costs on the calibration data and puts it in the merge report.

Why not repeat the layers, as Xu et al. balance post-norm BERTs: a repeated layer applies its whole function a
second time. On the digits BERTs of ``bench/hf_barrier.py`` repeating changed the shallow model's test loss by
0.26 (BENCHMARKS.md); a block inserted this way changes it by about 0.0002 (a trial on one seed, 2 layers made 4).

>>> import torch, transformers as t, hetsurgery as hs
>>> cfg = t.BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
...                    intermediate_size=32, max_position_embeddings=12, num_labels=3)
>>> x = {"input_ids": torch.randint(0, 20, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
>>> g = hs.trace(t.BertForSequenceClassification(cfg).eval(), x)
>>> deeper = InsertPostNormBlock("stage0", (1,))(g)
>>> len(deeper.stage("stage0")), deeper.params["bert.encoder.layer.2.output.dense.weight"].abs().max().item()
(3, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hetsurgery.passes.insert_zero_residual import InsertZeroResidual


@dataclass(frozen=True)
class InsertPostNormBlock(InsertZeroResidual):
    """Insert post-norm blocks that approximately compute their input into block stage ``stage`` before the units at
    ``positions`` (each after a block of the stage: position 0 is refused)."""

    name: ClassVar[str] = "insert-post-norm-block"
    exact: ClassVar[bool] = False
    post_norm: ClassVar[bool] = True
