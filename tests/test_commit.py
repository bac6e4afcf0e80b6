"""Commits: a Ctrl-C during one is held until it is complete, and two folders are exchanged in one step (or, where
the system cannot, by renames that are put back when one fails)."""

from __future__ import annotations

import os
import pathlib
import signal
import threading

import pytest

from hetsurgery.export import atomic_folder, commit
from hetsurgery.export.errors import InputError
from hetsurgery.export.outputs import PACKAGE


def _folder(path: pathlib.Path, text: str) -> pathlib.Path:
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


def test_a_ctrl_c_inside_a_commit_takes_effect_after_it() -> None:
    # asked where the test runs: an xdist worker may collect in one thread and run in another
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("only the main thread receives Python's signals")
    # Python's own Ctrl-C handler, whatever the process inherited (a job started in the background with `&` or
    # nohup ignores SIGINT, and Python then keeps ignoring it)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt), commit.uninterrupted():
            signal.raise_signal(signal.SIGINT)
            done.append("the rest of the commit")
        assert done == ["the rest of the commit"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.parametrize("one_call", [True, False])
def test_exchange_swaps_two_folders(one_call: bool, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not one_call:
        monkeypatch.setattr(commit, "_renameat2_exchange", lambda a, b: False)
    new, old = _folder(tmp_path / "new", "new"), _folder(tmp_path / "old", "old")
    commit.exchange(new, old)
    assert (old / "file.txt").read_text() == "new" and (new / "file.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]


def test_a_failed_exchange_by_renames_puts_the_old_folder_back(tmp_path: pathlib.Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit, "_renameat2_exchange", lambda a, b: False)
    old = _folder(tmp_path / "old", "old")
    with pytest.raises(FileNotFoundError):
        commit.exchange(tmp_path / "missing", old)
    assert (old / "file.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["old"]


def test_a_folder_that_changed_while_writing_is_not_replaced(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError, match="changed while writing"), atomic_folder(out, PACKAGE) as tmp:
        (tmp / "new.txt").write_text("new")
        _folder(out, "someone else's")
    assert (out / "file.txt").read_text() == "someone else's" and os.listdir(tmp_path) == ["out"]
