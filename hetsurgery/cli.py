"""hetsurgery merges neural networks of different architectures. `hetsurgery COMMAND --help` explains a command."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hetsurgery.errors import HetsurgeryError, InvalidInput

EXIT_CODES = ("exit codes: 0 success; 1 {failed} (or the output pipe was closed: `| head` ends it quietly); 2 bad "
              "input ({bad}, or an output that would overwrite an input or a file hetsurgery did not write); "
              "130 interrupted (Ctrl-C): every output is as it was or complete, never half written")
FORCE = ("overwrite an existing file at -o that lies in no package (never a folder, a symbolic link, a package's "
         "own file or an input)")
INTERRUPTED = 130
TRUST = "run the package's model.py (Python code) to load it; only for packages you trust"


def cmd_inspect(args: argparse.Namespace) -> int:
    from hetsurgery.config import model_graph

    print(model_graph(args.model, args.kw, args.input_shape, trust_code=args.trust_code).summary())
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from hetsurgery.config.commands import draw

    picture = draw(args.model, args.output, kwargs=args.kw, input_shape=args.input_shape, group=args.group,
                   names=args.names.split(",") if args.names else None, trust_code=args.trust_code,
                   depth=args.depth, cka=args.cka, plan_model=args.plan_model, force=args.force)
    if picture.note:  # Graphviz's `dot` is missing: how to get it
        print(picture.note, file=sys.stderr)
    print(f"{'picture' if picture.rendered else 'graphviz source'}: {picture.path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hetsurgery.config.commands import export_onnx

    report = export_onnx(args.package, args.output, input_shape=args.input_shape, static_batch=args.static_batch,
                         check=not args.no_check, trust_code=args.trust_code, force=args.force)
    print(f"parity: {report}\nonnx: {report.path}")
    return 0 if report.passed or args.no_check else 1  # --no-check reports a mismatch, never fails on it


def cmd_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hetsurgery.config import example_config, run_merge
    from hetsurgery.export.errors import InputError

    if args.example_config:
        print(example_config(), end="")
        return 0
    if args.config is None or args.output is None:
        raise InputError("give CONFIG.yaml and -o OUT (or --example-config for a template)")
    run = run_merge(Path(args.config), Path(args.output), progress=not args.quiet)
    print("\n".join(str(part) for part in (run.result.report, run.scores, f"package: {run.package}") if part))
    return 0


def cmd_assemble(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hetsurgery.config import AssemblyConfig, example_config, run_assembly
    from hetsurgery.config.assembly_run import EXAMPLE_HEADER
    from hetsurgery.export.errors import InputError

    if args.example_config:
        print(example_config(AssemblyConfig, EXAMPLE_HEADER), end="")
        return 0
    if args.config is None or args.output is None:
        raise InputError("give CONFIG.yaml and -o OUT (or --example-config for a template)")
    run = run_assembly(Path(args.config), Path(args.output), progress=not args.quiet)
    print("\n".join(str(part) for part in (run.result, run.scores, f"package: {run.package}") if part))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hetsurgery.demo import run_demo

    result = run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet,
                      echo=(lambda _: None) if args.quiet else print)
    print(f"{result.table()}\nloss barrier of two MLPs: unaligned {result.barrier['unaligned']:.3f}, "
          f"permute-aligned {result.barrier['permute-aligned']:.3f}")
    print("\n".join(f"{what}: {path}" for what, path in result.paths.items()))
    return 0


def _package_output(args: argparse.Namespace) -> Path | None:
    return Path(args.output) if args.output else None


def _onnx_output(args: argparse.Namespace) -> Path:
    return Path(args.output) if args.output else Path(args.package) / "model.onnx"


def _picture_output(args: argparse.Namespace) -> Path:
    from hetsurgery.config.commands import picture_file

    return picture_file(args.model, args.output, group=args.group, depth=args.depth, cka=args.cka)


def _demo_output(args: argparse.Namespace) -> Path:
    return Path(args.out)


Output = Callable[[argparse.Namespace], Path | None]


def _command(sub: Any, name: str, run: Callable[[argparse.Namespace], int], text: str, failed: str, bad: str,
             common: argparse.ArgumentParser, output: Output | None = None) -> argparse.ArgumentParser:
    """A sub-command; ``output`` says which file or folder it writes (for the message of a Ctrl-C)."""
    p = sub.add_parser(name, parents=[common], help=text, description=text + ".",
                       epilog=EXIT_CODES.format(failed=failed, bad=bad))
    p.set_defaults(run=run, writes=output)
    return p


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a package folder, a zoo name (resnet20, vgg, mlp, ...) or package.module:function "
                   "(imported from the current folder)")
    p.add_argument("--kw", action="append", default=[], metavar="KEY=VALUE", help="factory keyword argument (YAML)")
    p.add_argument("--input-shape", default="1,8,8", help="one example's shape, without the batch (1,8,8)")
    p.add_argument("--trust-code", action="store_true", help=TRUST)


def parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    p = argparse.ArgumentParser(prog="hetsurgery", description=__doc__, epilog=EXIT_CODES.format(
        failed="a valid operation failed", bad="arguments, files, models, data or options"))
    p.add_argument("--version", action="version", version=f"hetsurgery {version('hetsurgery')}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ins = _command(sub, "inspect", cmd_inspect, "trace a model and print its permutation groups",
                   "tracing failed unexpectedly", "a model, factory, --kw, --input-shape or package", common)
    _model_arguments(ins)

    mrg = _command(sub, "merge", cmd_merge, "merge the models of a YAML config into a package folder",
                   "the merge failed", "the config, a weights file, a factory, the data, the merge options, or an "
                   "output folder that is not a package", common, _package_output)
    mrg.add_argument("config", nargs="?", help="the YAML file (hetsurgery merge --example-config prints every key)")
    mrg.add_argument("-o", "--output", help="the package folder to write: a new or empty folder, or an existing "
                     "package, which is replaced")
    mrg.add_argument("--example-config", action="store_true", help="print a commented template of every key")

    asm = _command(sub, "assemble", cmd_assemble, "a base model absorbs units of donor models of other widths and "
                   "depths (Model Assembly Learning), written as a package folder", "the assembly failed",
                   "the config, a weights file, a factory, the data, a unit name, a λ outside [0, 1], a donor whose "
                   "input or output differs from the base's or whose depth differs without depth:, the alignment "
                   "options, or an output folder that is not a package", common, _package_output)
    asm.add_argument("config", nargs="?", help="the YAML file (hetsurgery assemble --example-config prints every key)")
    asm.add_argument("-o", "--output", help="the package folder to write: a new or empty folder, or an existing "
                     "package, which is replaced")
    asm.add_argument("--example-config", action="store_true", help="print a commented template of every key")

    exp = _command(sub, "export", cmd_export, "export a package to ONNX and check it with onnxruntime",
                   "onnxruntime disagrees with torch (the parity check)", "the package or --input-shape", common,
                   _onnx_output)
    exp.add_argument("package", help="a package folder written by `hetsurgery merge` or hetsurgery.export.save")
    exp.add_argument("-o", "--output", help="the .onnx file (default: PACKAGE/model.onnx); an existing file is "
                     "replaced only inside a package, or with --force")
    exp.add_argument("--force", action="store_true", help=FORCE)
    exp.add_argument("--input-shape", help="one example's shape, if the package records none")
    exp.add_argument("--static-batch", action="store_true", help="fix the batch size instead of a symbolic one")
    exp.add_argument("--no-check", action="store_true", help="report the parity errors but never fail on them")
    exp.add_argument("--trust-code", action="store_true", help=TRUST)

    ren = _command(sub, "render", cmd_render, "draw one picture: a model's groups and units, one group of a "
                   "package's width plan (--group), a package's depth plan (--depth) or its CKA matrices (--cka); "
                   "--group, --depth and --cka each choose another picture, so give at most one of them",
                   "Graphviz's dot failed", "the model, the plan group, the file suffix, or options that ask for "
                   "two pictures or that the picture does not use", common, _picture_output)
    _model_arguments(ren)
    ren.add_argument("-o", "--output", help="the .svg, .png or .gv file (--cka: .png or .svg; default: "
                     "PACKAGE/graph.svg, PACKAGE/plan-group-N.svg, PACKAGE/depth-plan.svg, PACKAGE/cka.png or "
                     "MODEL.svg); an existing file is replaced only inside a package, or with --force")
    ren.add_argument("--force", action="store_true", help=FORCE)
    ren.add_argument("--group", type=int, help="draw this group of the package's width plan instead")
    ren.add_argument("--names", help="with --group or --depth: comma-separated model names for the plan's columns")
    ren.add_argument("--depth", action="store_true", help="draw the package's depth plan (PACKAGE/depth-plan.svg)")
    ren.add_argument("--cka", action="store_true", help="draw the depth plan's CKA matrices (PACKAGE/cka.png)")
    ren.add_argument("--plan-model", type=int, help="with --depth or --cka: which model's alignment (default: the first)")

    demo = _command(sub, "demo", cmd_demo, "train two models on disjoint digit tasks, merge them every way, "
                    "compare, save, export to ONNX and draw", "a step failed", "the output folder", common,
                    _demo_output)
    demo.add_argument("-o", "--out", default="hetsurgery-out", help="output folder (default: hetsurgery-out): a new "
                      "or empty folder, or one an earlier demo wrote, which is replaced")
    demo.add_argument("--quick", action="store_true", help="a smaller network and fewer epochs")
    demo.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code: 0 success, 1 the operation failed, 2 bad input, 130 interrupted.

    Called without ``argv`` it is the program itself (``hetsurgery``, ``python -m hetsurgery``): once the
    command has ended and said so, a Ctrl-C while Python shuts down is ignored instead of killing the process
    without a word; and an interrupted command, its line printed, ends the way Unix tools stopped by Ctrl-C do,
    by SIGINT (the shell shows 130 and stops a loop that runs it).
    """
    code = _run(argv)
    if argv is None and threading.current_thread() is threading.main_thread():
        if code == INTERRUPTED and os.name == "posix":
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
                sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.raise_signal(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def _run(argv: Sequence[str] | None) -> int:
    name, target, before = "hetsurgery", None, None
    try:
        try:
            args = parser().parse_args(argv)
        except SystemExit:  # --help, --version, a usage error: printed, and maybe into a closed pipe
            sys.stdout.flush()
            raise
        name = f"hetsurgery {args.command}"
        target = args.writes(args) if args.writes is not None else None
        before = _identity(target)
        code = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, not in Python's last flush at exit
        return code
    except BrokenPipeError:  # `hetsurgery inspect PKG | head -3`: the reader has all it wanted
        _detach_stdout()
        return 1
    except KeyboardInterrupt:
        print(f"{name}: {_interrupted(target, before)}", file=sys.stderr)
        return INTERRUPTED
    except ImportError as exc:
        if not _by_interrupt(exc):
            raise
        print(f"{name}: {_interrupted(target, before)}", file=sys.stderr)  # Ctrl-C while an extension loaded
        return INTERRUPTED
    except (HetsurgeryError, OSError) as exc:  # OSError: a full disk, a file vanishing: not the input's fault
        # one line per message; a config's list of problems (ConfigProblems) keeps one line per problem
        text = str(exc) if hasattr(exc, "problems") else " ".join(str(exc).split())
        print(f"{name}: {text}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidInput) else 1


def _by_interrupt(exc: BaseException) -> bool:
    """Whether a Ctrl-C caused ``exc`` (pybind11 turns one during a module's initialisation into ImportError)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return any(isinstance(e, KeyboardInterrupt) for e in chain)


def _identity(path: Path | None) -> tuple[int, int] | None:
    """What a command's output is before it runs (inode and modification time; ``None`` when it is missing)."""
    try:
        st = os.lstat(path) if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_ino, st.st_mtime_ns)


def _interrupted(target: Path | None, before: tuple[int, int] | None) -> str:
    """What a Ctrl-C left: outputs are replaced in one step, so the output is either as it was or complete."""
    if target is None:
        return "interrupted; nothing was left half written"
    if _identity(target) == before:
        return f"interrupted; {target} is as it was" if before is not None else "interrupted; nothing was written"
    return f"interrupted after {target} was written in full"


def _detach_stdout() -> None:
    """Point stdout at the null device, so that Python's last flush has nowhere to fail (the recipe of Python's
    documentation of SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
