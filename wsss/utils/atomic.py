"""Atomic writes: build at a temporary path beside the target, then rename over it.

A stage killed midway leaves only a ``.tmp-<name>-<pid>-*`` sibling, never a half-written target that
the next stage would consume; the next write of the same target removes such leftovers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import yaml


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(target: Path) -> None:
    """Delete the temporary (and replaced) siblings of ``target`` left by a killed process: those whose
    writer's PID no longer runs."""
    for kind in (".tmp", ".old"):
        prefix = f"{kind}-{target.name}-"
        for stale in target.parent.glob(prefix + "*"):
            pid = stale.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    For a directory the previous target (if any) is replaced only once the new one is complete.
    On an exception the temporary path is removed and the target is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    prefix = f".tmp-{target.name}-{os.getpid()}-"
    umask = os.umask(0)
    os.umask(umask)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        tmp.chmod(0o777 & ~umask)
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        tmp.chmod(0o666 & ~umask)  # mkstemp makes files private; outputs get the usual modes
    try:
        yield tmp
        if directory:
            if target.exists():
                old = target.with_name(f".old-{target.name}-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml(target: str | os.PathLike, obj) -> None:
    write_text(target, yaml.safe_dump(obj, sort_keys=False))
