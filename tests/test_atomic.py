"""Atomic writes: nothing half-written at the target, leftovers of killed writers cleaned up."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wsss.utils import atomic
from wsss.utils.atomic import atomic_path, remove_stale, write_json, write_text, write_yaml


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


def test_a_live_writers_leftovers_and_the_writer_are_left_alone(tmp_path):
    target = tmp_path / "crf"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = tmp_path / f".tmp-crf-{writer.pid}-abc"
        mine.mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        gone = tmp_path / f".old-crf-{int(dead.stdout)}"
        gone.write_text("x")
        remove_stale(target)
        assert mine.is_dir() and not gone.exists()
        with pytest.raises(subprocess.TimeoutExpired):  # checking a writer must not signal it
            writer.wait(timeout=1)
    finally:
        writer.kill()
        writer.wait()


def test_a_pid_of_another_user_counts_as_alive(monkeypatch):
    def denied(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "kill", denied)
    assert atomic._alive(12345) is True


def test_write_yaml_keeps_the_key_order(tmp_path):
    write_yaml(tmp_path / "c.yaml", {"train": {"lr": 0.01}, "data": {"name": "toy"}})
    assert (tmp_path / "c.yaml").read_text() == "train:\n  lr: 0.01\ndata:\n  name: toy\n"


def test_names_that_carry_no_pid_are_not_leftovers(tmp_path):
    for name in (".tmp-crf-notapid-x", ".old-crf-", ".tmp-crf-12x-y"):
        (tmp_path / name).mkdir()
    remove_stale(tmp_path / "crf")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".old-crf-", ".tmp-crf-12x-y", ".tmp-crf-notapid-x"]


def test_a_leftover_removed_meanwhile_by_another_writer_is_no_error(tmp_path, monkeypatch):
    """Two stages cleaning the same folder: the leftover vanishes between the listing and the removal."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".tmp-crf-{pid}-dir").mkdir()
    (tmp_path / f".tmp-crf-{pid}-file").write_text("x")
    real_rmtree, real_unlink = atomic.shutil.rmtree, type(tmp_path).unlink

    def rmtree_after_the_other(path, *args, **kwargs):
        real_rmtree(path)
        return real_rmtree(path, *args, **kwargs)

    def unlink_after_the_other(self, *args, **kwargs):
        real_unlink(self)
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree_after_the_other)
    monkeypatch.setattr(type(tmp_path), "unlink", unlink_after_the_other)
    remove_stale(tmp_path / "crf")
    assert list(tmp_path.iterdir()) == []


def test_write_json_is_indented_in_key_order(tmp_path):
    write_json(tmp_path / "m.json", {"miou": 0.5, "images": [1, 2]})
    assert (tmp_path / "m.json").read_text() == '{\n  "miou": 0.5,\n  "images": [\n    1,\n    2\n  ]\n}\n'
