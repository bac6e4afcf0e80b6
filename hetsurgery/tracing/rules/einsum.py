"""The rule for ``torch.einsum``: each operand's dims get letters, and a channel letter says what happens.

* In one operand and in the output: the channels pass through to that output dim (a head letter may be
  shared with untracked operands: heads are never reordered).
* In two tracked operands and not in the output: a contraction (``q·k``); their groups join, as in matmul.
* In one operand and nowhere else: summed over, the result no longer depends on the order (a reduction).
* Anything else (contracted with an untracked tensor, multiplied channel by channel with one, a parameter
  operand) freezes what it touches.

>>> _letters("b h i d, b h j d -> b h i j", [4, 4])
([['b', 'h', 'i', 'd'], ['b', 'h', 'j', 'd']], ['b', 'h', 'i', 'j'])
>>> _letters("...d,de", [3, 2])
([['A', 'B', 'd'], ['d', 'e']], ['A', 'B', 'e'])
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import replace
from typing import Any

from torch import fx

from hetsurgery.tracing.lifter import Lifter, free_of
from hetsurgery.tracing.rules.args import rank, value
from hetsurgery.tracing.values import Chan, Free, Heads, Param, Value, vars_of


def einsum(lx: Lifter, node: fx.Node) -> Value:
    equation, *srcs = node.args
    if len(srcs) == 1 and isinstance(srcs[0], (list, tuple)):
        srcs = list(srcs[0])
    vals = [value(lx, s) for s in srcs]
    parsed = _letters(equation, [rank(s) for s in srcs]) if isinstance(equation, str) else None
    if parsed is None:
        return lx.give_up(vals, f"an einsum the rules cannot read at node {node.name}")
    terms, out = parsed
    if any(isinstance(v, Param) for v in vals):
        return lx.give_up(vals, f"einsum with a parameter at node {node.name}")
    tracked = [i for i, v in enumerate(vals) if isinstance(v, (Chan, Heads))]
    if not tracked:
        return free_of(vals)
    if len(tracked) > 2:
        return lx.give_up(vals, f"einsum of more than two tracked operands at node {node.name}")
    if len(tracked) == 2:
        return _contract(lx, node, [vals[i] for i in tracked], [terms[i] for i in tracked], terms, out) or \
            lx.give_up(vals, f"an einsum contraction the rules cannot follow at node {node.name}")
    i = tracked[0]
    x, term = vals[i], terms[i]
    others = Counter(c for j, t in enumerate(terms) if j != i for c in t)
    chan, head = _channel_letters(x, term)
    if any(term.count(c) != 1 for c in (chan, head) if c is not None):
        return lx.give_up(vals, f"an einsum diagonal over the channels at node {node.name}")
    if chan in out and (head is None or head in out) and not others[chan]:
        if isinstance(x, Chan):
            return x.moved(out.index(chan))
        assert head is not None
        return replace(x, block_dim=out.index(head), dim=out.index(chan))
    if chan not in out and not others[chan] and (head is None or (head not in out and not others[head])):
        lx.block_pad(vars_of(x), f"einsum sums over the channels at node {node.name}")
        return Free("reduced over channels")
    return lx.give_up(vals, f"einsum meets the channels with an untracked tensor at node {node.name}")


def _contract(lx: Lifter, node: fx.Node, xs: list[Any], ts: list[list[str]], terms: list[list[str]],
              out: list[str]) -> Value | None:
    """Two tracked operands: the channel letter shared and summed, heads (if any) on the same letter."""
    (a, b), (ta, tb) = xs, ts
    (ca, ha), (cb, hb) = _channel_letters(a, ta), _channel_letters(b, tb)
    if ca != cb or ha != hb or ca in out or sum(t.count(ca) for t in terms) != 2:
        return None
    if isinstance(a, Chan) and isinstance(b, Chan):
        if [(s.layout, at) for s, at in a.offsets()] != \
                [(s.layout, at) for s, at in b.offsets()]:
            return None
    elif not (isinstance(a, Heads) and isinstance(b, Heads) and (a.count, a.size) == (b.count, b.size)):
        return None
    for x, y in zip(vars_of(a), vars_of(b), strict=True):
        lx.union(x, y, node)
    lx.block_zip(vars_of(a), f"contracted with another group at node {node.name}")
    return Free("contraction")


def _channel_letters(x: Chan | Heads, term: list[str]) -> tuple[str, str | None]:
    if isinstance(x, Chan):
        return term[x.dim], None
    return term[x.dim], term[x.block_dim]


def _letters(equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """Each operand's letters and the output's, ``...`` spelled out (letters not in the equation)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    raw = lhs.split(",")
    if len(raw) != len(ranks):
        return None
    spare = [c for c in string.ascii_uppercase + string.ascii_lowercase if c not in eq]
    ell = max((r - len(t.replace("...", "")) for t, r in zip(raw, ranks, strict=True) if "..." in t), default=0)
    if ell > len(spare):
        return None
    fill = spare[:ell]
    terms = []
    for t, r in zip(raw, ranks, strict=True):
        head, dots, tail = t.partition("...")
        letters = [*head, *(fill[ell - (r - len(head) - len(tail)):] if dots else []), *tail]
        if len(letters) != r or not all(c.isalpha() for c in letters):
            return None
        terms.append(letters)
    if arrow:
        head, dots, tail = rhs.partition("...")
        out = [*head, *(fill if dots else []), *tail]
    else:  # implicit output: the letters seen once, in alphabetical order, after the broadcast dims
        seen = Counter(c for t in terms for c in t if c not in fill)
        out = [*fill, *sorted(c for c, n in seen.items() if n == 1)]
    return terms, out
