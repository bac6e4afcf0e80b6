"""The ``hetsurgery`` command line: parse, validate, call one library function per command.

Exit codes: 0 success, 1 the operation failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
import yaml

from hetsurgery import zoo
from hetsurgery.errors import HetsurgeryError, TracingError
from hetsurgery.tracing import trace


class BadInput(Exception):
    """The user's arguments are wrong: exit code 2."""


def _kwargs(pairs: Sequence[str]) -> dict[str, object]:
    out = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.isidentifier():
            raise BadInput(f"--kw takes key=value, not {pair!r}")
        out[key] = yaml.safe_load(raw)
    return out


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise BadInput(f"--input-shape takes comma-separated integers like 1,8,8, not {text!r}") from exc


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        model = zoo.resolve(args.model)(**_kwargs(args.kw))
    except (ValueError, TypeError) as exc:
        raise BadInput(str(exc)) from exc
    example = torch.randn(2, *_shape(args.input_shape))
    try:
        g = trace(model, example, name=args.model)
    except TracingError as exc:
        raise BadInput(str(exc)) from exc
    print(g.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hetsurgery.demo import run_demo

    echo = (lambda _: None) if args.quiet else print
    result = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet, echo=echo)
    print(result.table())
    print(f"loss barrier of two MLPs: unaligned {result.barrier['unaligned']:.3f}, "
          f"permute-aligned {result.barrier['permute-aligned']:.3f}")
    for what, path in result.paths.items():
        print(f"{what}: {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hetsurgery", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="trace a model and print its permutation groups and coverage")
    ins.add_argument("model", help="a zoo name (resnet20, vgg, mlp, ...) or package.module:function")
    ins.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE", help="factory keyword argument")
    ins.add_argument("--input-shape", default="1,8,8", help="one example's shape, without the batch (1,8,8)")
    ins.set_defaults(run=cmd_inspect)
    demo = sub.add_parser("demo", help="train two models on disjoint digit tasks, merge them every way, compare")
    demo.add_argument("-o", "--out", default="hetsurgery-out", help="output folder (default: hetsurgery-out)")
    demo.add_argument("--quick", action="store_true", help="a smaller network and fewer epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except BadInput as exc:
        print(f"hetsurgery {args.command}: {exc}", file=sys.stderr)
        return 2
    except HetsurgeryError as exc:
        print(f"hetsurgery {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
