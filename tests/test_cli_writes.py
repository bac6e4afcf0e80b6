"""Files are never lost: every command that writes (merge, assemble, export, render, demo) against outputs that
are not its own, and Ctrl-C at several points.

The rule (``hetsurgery.export.outputs``): a command writes a new path, an empty folder, a folder that carries
our marker (a package; a folder the demo wrote), or a file our commands add to a package; an existing file
elsewhere only with ``--force``. Anything else — a user's file or folder, a symbolic link, a read-only or
immutable place — is refused before any work with exit 2 and one line. A Ctrl-C leaves the old output as it
was or the new one whole, says which in one line, and leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import safetensors.torch
import torch
import yaml

import hetsurgery as hs
from hetsurgery.cli import main
from hetsurgery.export import is_package, read_plan, save
from hetsurgery.export.manifest import write_manifest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DRIVER = pathlib.Path(__file__).with_name("interrupt_at.py")
MODELS = [{"factory": "mlp", "kwargs": {"hidden": [16, 16]}, "weights": "a.safetensors"},
          {"factory": "mlp", "kwargs": {"hidden": [24, 16]}, "weights": "b.pt"}]
MERGE = {"models": MODELS, "input_shape": [1, 8, 8], "calibration": {"every": 8}, "width": {"method": "zip"}}
ASSEMBLE = {"base": MODELS[0], "donors": [MODELS[1]], "input_shape": [1, 8, 8], "calibration": {"every": 8}}
FOLDERS = ("merge", "assemble", "demo")  # the commands that write a folder
FILES = {"export": ".onnx", "render": ".svg"}  # the commands that write a file, and its suffix


class Site:
    """A user's folder: the configs and weights of a run, a package, and byte snapshots of everything."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root, self.run = root, root / "run"
        self.run.mkdir()
        torch.manual_seed(0)
        safetensors.torch.save_file(hs.zoo.mlp([16, 16]).state_dict(), str(self.run / "a.safetensors"))
        torch.save(hs.zoo.mlp([24, 16]).state_dict(), self.run / "b.pt")
        for name, config in (("merge", MERGE), ("assemble", ASSEMBLE)):
            (self.run / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.pkg = save(hs.trace(hs.zoo.mlp([16]), torch.randn(2, 1, 8, 8)), root / "pkg")

    def argv(self, command: str, out: pathlib.Path | None) -> list[str]:
        """The command line that writes to ``out`` (its default output when ``None``)."""
        source = {"merge": [str(self.run / "merge.yaml")], "assemble": [str(self.run / "assemble.yaml")],
                  "export": [str(self.pkg)], "render": ["mlp"], "demo": ["--quick"]}[command]
        return [command, *source, *(["-o", str(out)] if out is not None else []), "--quiet"]

    def snapshot(self) -> dict[str, tuple[bytes | None, int]]:
        """Every file's bytes and every folder's and file's inode; hidden ones included, __pycache__ left out."""
        return {str(p.relative_to(self.root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None,
                                                p.lstat().st_ino)
                for p in sorted(self.root.rglob("*")) if "__pycache__" not in p.parts}

    def debris(self) -> list[str]:
        """Temporary files or folders left anywhere (``.NAME.HEX.tmp``, ``.old``, ``.swap``)."""
        return [str(p) for p in self.root.rglob(".*") if p.suffix in (".tmp", ".old", ".swap")]


@pytest.fixture
def site(tmp_path: pathlib.Path) -> Site:
    return Site(tmp_path)


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command's work fails the test: a refusal must come before it."""
    import hetsurgery.assembly
    import hetsurgery.config.commands
    import hetsurgery.demo
    import hetsurgery.merging

    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started its work before refusing its output")

    for owner, name in ((hetsurgery.merging, "merge"), (hetsurgery.assembly, "assemble"),
                        (hetsurgery.demo, "train_pair"), (hetsurgery.config.commands, "to_onnx"),
                        (hetsurgery.config.commands, "model_graph"), (hetsurgery.config.commands, "open_package")):
        monkeypatch.setattr(owner, name, work)


def refused(site: Site, argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """Run the command: exit 2, one line on stderr naming the command and every fragment, nothing changed."""
    before = site.snapshot()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"hetsurgery {argv[0]}: ") and "Traceback" not in err, err
    assert all(f in err for f in fragments), err
    assert site.snapshot() == before
    return err


@contextlib.contextmanager
def locked(folder: pathlib.Path) -> Iterator[None]:
    """``folder`` (or a file) refuses every change: immutable (chattr +i, root included) or, for a user,
    read-only."""
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    elif os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
    else:
        pytest.skip("root on a file system without chattr +i: no folder here refuses a write")


# -- every command, every output that is not its own -----------------------------------------------------

def _user_output(site: Site, command: str, case: str) -> tuple[pathlib.Path, str]:
    """The output path for ``case`` and what the refusal says."""
    suffix = FILES.get(command, "")
    if case == "user file":
        path = site.root / f"mine{suffix}"
        path.write_text("the user's own file")
        return path, ("exists and is not a folder" if command in FOLDERS else "give --force to overwrite it")
    if case == "user folder":
        path = site.root / f"mine{suffix}"
        path.mkdir()
        (path / "notes.txt").write_text("keep me")
        return path, ("exists and is not empty" if command in FOLDERS else "is a folder; give a file name")
    if case == "symbolic link to a package":
        path = site.root / f"link{suffix}"
        path.symlink_to(site.pkg, target_is_directory=True)
        return path, f"is a symbolic link (to {site.pkg})"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["user file", "user folder", "symbolic link to a package"])
@pytest.mark.parametrize("command", [*FOLDERS, *FILES])
def test_an_output_that_is_not_ours_is_refused_before_any_work(command: str, case: str, site: Site, no_work: None,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out, says = _user_output(site, command, case)
    refused(site, site.argv(command, out), capsys, says)


@pytest.mark.parametrize("command", [*FOLDERS, *FILES])
def test_a_read_only_or_immutable_folder_is_refused_before_any_work(command: str, site: Site, no_work: None,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = site.root / "locked"
    folder.mkdir()
    with locked(folder):
        refused(site, site.argv(command, folder / f"out{FILES.get(command, '')}"), capsys,
                f"{folder} is read-only or immutable")


@pytest.mark.parametrize("command", ["merge", "assemble", "export", "render"])
def test_an_immutable_package_is_refused_before_any_work(command: str, site: Site, no_work: None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Replacing it (merge, assemble) or adding a file to it (export, render) would fail after the work."""
    out = site.pkg if command in FOLDERS else None
    argv = site.argv(command, out) if command != "render" else ["render", str(site.pkg), "--quiet"]
    with locked(site.pkg):
        refused(site, argv, capsys, "read-only or immutable")


def test_a_package_with_an_immutable_file_is_not_replaced(site: Site, no_work: None,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The old package could not be removed once the new one is in place: refused before any work."""
    with locked(site.pkg / "report.md"):
        refused(site, site.argv("merge", site.pkg), capsys, "report.md in it is read-only or immutable")


@pytest.mark.parametrize(("argv", "says"), [
    (["export", "PKG", "-o", "notes.txt"], "does not end in .onnx"),
    (["render", "mlp", "-o", "pic.pdf"], "use a .svg, .png or .gv file name"),
    (["render", "PKG", "--cka", "-o", "cka.gv"], "use a .png or .svg file name"),
    (["render", "PKG", "--depth", "--cka"], "--depth and --cka each draw another picture; give one of them"),
    (["render", "PKG", "--group", "0", "--depth"], "--group and --depth each draw another picture"),
    (["render", "mlp", "--names", "A,B"], "--names labels the models of a plan: give it with --group or --depth"),
    (["render", "PKG", "--group", "0", "--plan-model", "1"], "--plan-model picks the model of a depth plan"),
])
def test_suffixes_and_picture_options_are_checked_before_any_work(argv: list[str], says: str, site: Site,
                                                                  no_work: None,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    refused(site, [str(site.pkg) if a == "PKG" else a for a in argv], capsys, says)


def test_the_issue_s_cases_render_and_demo_leave_the_user_s_files(site: Site, no_work: None,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`render resnet20` beside the user's resnet20.svg; `demo -o D` where D holds the user's pictures."""
    monkeypatch.chdir(site.root)
    (site.root / "resnet20.svg").write_text("<svg>the user's drawing</svg>")
    refused(site, ["render", "resnet20"], capsys, "resnet20.svg exists", "--force")
    demo = site.root / "D"
    (demo / "pictures").mkdir(parents=True)
    (demo / "interpolation.png").write_bytes(b"the user's plot")
    (demo / "pictures" / "merged-graph.svg").write_text("<svg/>")
    refused(site, ["demo", "-o", str(demo), "--quick"], capsys, "is not a folder written by hetsurgery demo")
    write_manifest(demo, "demo")  # an earlier demo's folder, then the user's notes in it
    (demo / "zip").mkdir()
    (demo / "zip" / "notes.txt").write_text("mine")
    refused(site, ["demo", "-o", str(demo), "--quick"], capsys, "the demo did not write: zip/notes.txt")


def test_a_demo_folder_is_recognised_by_its_manifest_until_someone_adds_a_file(site: Site) -> None:
    from hetsurgery.demo import DEMO_FOLDER

    demo = site.root / "D"
    (demo / "pictures").mkdir(parents=True)
    (demo / "interpolation.png").write_bytes(b"png")
    shutil.copytree(site.pkg, demo / "zip")
    write_manifest(demo, "demo")
    assert DEMO_FOLDER.why_not(demo) is None
    (demo / "zip" / "graph.svg").write_text("<svg/>")  # render may add a picture to a package later
    assert DEMO_FOLDER.why_not(demo) is None
    (demo / "pictures" / "mine.svg").write_text("<svg/>")
    assert DEMO_FOLDER.why_not(demo) == "it holds files that the demo did not write: pictures/mine.svg"


# -- what is ours is replaced; --force replaces a plain file ---------------------------------------------

def test_render_replaces_its_own_picture_in_a_package_and_a_user_file_only_with_force(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):  # PACKAGE/graph.svg is the package's own added file: drawn again without --force
        assert main(["render", str(site.pkg), "--quiet"]) == 0
    assert (site.pkg / "graph.svg").read_text().lstrip().startswith("<?xml") and is_package(site.pkg)
    mine = site.root / "mine.svg"
    mine.write_text("the user's own drawing")
    assert main(["render", "mlp", "-o", str(mine), "--quiet"]) == 2
    assert main(["render", "mlp", "-o", str(mine), "--force", "--quiet"]) == 0
    assert mine.read_text().lstrip().startswith("<?xml") and not site.debris()
    assert main(["render", "mlp", "-o", str(site.root / "link.svg"), "--force", "--quiet"]) == 0  # a new file
    (site.root / "alias.svg").symlink_to(mine)
    assert main(["render", "mlp", "-o", str(site.root / "alias.svg"), "--force", "--quiet"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err


# -- Ctrl-C ---------------------------------------------------------------------------------------------

def interrupted(site: Site, point: str, argv: list[str], *, seconds: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``hetsurgery ARGV`` paused at ``point`` (see ``interrupt_at.py``), press Ctrl-C there, wait for it."""
    marker = site.root.parent / f"{site.root.name}-paused"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(DRIVER), point, str(marker), str(seconds), "--", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=site.root,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), f"the run never reached {point}: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    marker.unlink()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# where each command is stopped before its commit: merge with the new package built and being checked in its
# temporary folder, render with the new picture written beside the old one, assemble and demo in their work
# (the demo's temporary folder already made); export's ONNX staging is stopped inside its commit below
BEFORE = {"merge": "hetsurgery.export.package:check_round_trip", "assemble": "hetsurgery.assembly:assemble",
          "render": "hetsurgery.export.atomic:replace_files", "demo": "hetsurgery.demo:train_pair"}
COMMIT = {"merge": "hetsurgery.export.atomic:exchange", "export": "hetsurgery.export.commit:uninterrupted:inside",
          "render": "hetsurgery.export.commit:uninterrupted:inside"}


def _existing_output(site: Site, command: str) -> pathlib.Path:
    """An output of ``command`` that is already there: a package, ONNX bytes in a package, a demo folder."""
    if command in ("merge", "assemble"):
        return site.pkg
    if command == "export":
        (site.pkg / "model.onnx").write_bytes(b"an older export")
        return site.pkg / "model.onnx"
    if command == "render":
        (site.pkg / "graph.svg").write_text("<svg>an older picture</svg>")
        return site.pkg / "graph.svg"
    demo = site.root / "D"
    demo.mkdir()
    (demo / "interpolation.png").write_bytes(b"an older plot")
    write_manifest(demo, "demo")
    return demo


def _argv(site: Site, command: str, out: pathlib.Path) -> list[str]:
    return ["render", str(site.pkg), "--quiet"] if command == "render" else site.argv(command, out)


@pytest.mark.parametrize("command", list(BEFORE))
def test_ctrl_c_before_the_output_is_replaced_leaves_it_as_it_was(command: str, site: Site) -> None:
    """Interrupted in the work or late, with the new output half made in its temporary place."""
    out = _existing_output(site, command)
    before = site.snapshot()
    done = interrupted(site, BEFORE[command], _argv(site, command, out))
    assert done.returncode == -signal.SIGINT, done.stderr  # like a Unix tool stopped by Ctrl-C: the shell shows 130
    assert done.stderr == f"hetsurgery {command}: interrupted; {out} is as it was\n"
    assert site.snapshot() == before and not site.debris()


@pytest.mark.parametrize("command", ["merge", "export", "render"])
def test_ctrl_c_while_the_output_is_replaced_lets_the_replacement_finish(command: str, site: Site) -> None:
    """Interrupted inside the commit: it completes, then the interrupt takes effect and says so."""
    out = _existing_output(site, command)
    old = out.lstat().st_ino
    done = interrupted(site, COMMIT[command], _argv(site, command, out), seconds=1.0)
    assert done.returncode == -signal.SIGINT, done.stderr
    assert done.stderr == f"hetsurgery {command}: interrupted after {out} was written in full\n"
    assert out.lstat().st_ino != old and is_package(site.pkg) and not site.debris()
    if command == "merge":
        assert read_plan(out).method == "zip"  # the new package, whole (the old one had no plan)
    else:
        assert b"older" not in out.read_bytes()


def test_ctrl_c_after_the_command_has_ended_changes_nothing(site: Site) -> None:
    """A Ctrl-C while Python shuts down is ignored: the package is written and the report printed."""
    done = interrupted(site, "exit", site.argv("merge", site.pkg), seconds=1.0)
    assert (done.returncode, done.stderr) == (0, "")
    assert f"package: {site.pkg}" in done.stdout and is_package(site.pkg) and not site.debris()
