"""Atomic writes: nothing half-written at the target, leftovers of killed writers cleaned up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wsss.utils.atomic import atomic_path, write_text


def test_a_failed_write_leaves_the_old_target(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_directory_is_replaced_only_when_complete(tmp_path):
    target = tmp_path / "masks"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a.png").write_text("1")
    assert (target / "a.png").exists()
    with pytest.raises(RuntimeError):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "b.png").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["a.png"]


def test_leftovers_of_a_killed_writer_are_removed(tmp_path):
    target = tmp_path / "infer"
    # A writer killed with SIGKILL never reaches its cleanup.
    code = ("import os, sys; from wsss.utils.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}, directory=True) as tmp:\n"
            "    (tmp / 'x').write_text('partial'); os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code])
    leftovers = list(tmp_path.glob(".tmp-infer-*"))
    assert len(leftovers) == 1 and not target.exists()
    with atomic_path(target, directory=True) as tmp:
        (tmp / "y").write_text("done")
    assert not list(tmp_path.glob(".tmp-infer-*"))
    assert (target / "y").read_text() == "done"
    assert (target.stat().st_mode & 0o777) != 0o700, "outputs get the usual modes, not mkdtemp's private ones"


def test_a_rerun_replaces_the_whole_directory(tmp_path):
    target = tmp_path / "masks"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a.png").write_text("old")
        (tmp / "stale.png").write_text("old")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a.png").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["a.png"] and (target / "a.png").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["masks"]
