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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hetsurgery", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="trace a model and print its permutation groups and coverage")
    ins.add_argument("model", help="a zoo name (resnet20, vgg, mlp, ...) or package.module:function")
    ins.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE", help="factory keyword argument")
    ins.add_argument("--input-shape", default="1,8,8", help="one example's shape, without the batch (1,8,8)")
    ins.set_defaults(run=cmd_inspect)
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
