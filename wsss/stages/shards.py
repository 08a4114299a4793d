"""Sharding `infer` and `crf` over separate jobs, and gathering the shards into the stage's folder.

``wsss infer --shard I/N`` (and ``wsss crf --shard I/N``) does the stage's work on the I-th of N
contiguous blocks of its images (1-based, as Snakemake's scatter items ``I-of-N``), writing
atomically into ``<stage folder>.shards/I-of-N/``. ``--gather N`` refuses to go on unless all N
shards are there, each made under the stage's current configuration and holding exactly its block;
it then links their files into the stage's usual folder in one atomic step and removes the shards.
Every image is computed on its own, so the gathered folder equals an unsharded run's, byte for byte
on the masks (tested).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from wsss.errors import WsssError
from wsss.utils.atomic import atomic_path


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, images: int) -> "Shard":
        """``"I/N"`` (or Snakemake's ``"I-of-N"``) for a stage over ``images`` images; WsssError naming the
        value when it is malformed, when I is outside 1..N, or when N exceeds the number of images."""
        match = re.fullmatch(r"\s*(\d+)\s*(?:/|-of-)\s*(\d+)\s*", text)
        if not match:
            raise WsssError(f"--shard {text!r}: expected I/N, the I-th of N shards (for example 2/8)")
        index, count = int(match[1]), int(match[2])
        if count < 1 or not 1 <= index <= count:
            raise WsssError(f"--shard {text}: the shard index must be 1..{count}" if count else
                            f"--shard {text}: the number of shards must be at least 1")
        check_count(count, images)
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def take(self, items: Sequence) -> list:
        """This shard's contiguous block of ``items``: ``items[(I-1) L // N : I L // N]``."""
        n = len(items)
        return list(items[(self.index - 1) * n // self.count: self.index * n // self.count])


def check_count(count: int, images: int) -> None:
    if count < 1:
        raise WsssError(f"--gather {count}: the number of shards must be at least 1")
    if count > images:
        raise WsssError(f"{count} shards for {images} images: every shard needs at least one image")


def shards_root(target: Path) -> Path:
    """Where the shards of the stage folder ``target`` go: ``<target>.shards/``."""
    return target.with_name(target.name + ".shards")


def shard_dir(target: Path, shard: Shard) -> Path:
    return shards_root(target) / shard.name


def gather(target: Path, count: int, names: Sequence[str], folders: Sequence[str], stage: str,
           check: Callable[[Path], None], finish: Callable[[Path, list[Path]], None]) -> None:
    """Gather the ``count`` shards of ``target`` (the stage folder) into it, atomically.

    ``names``: every image of the stage in order (the blocks are cut from it); ``folders``: the
    per-image subfolders to merge (their files are hard-linked, or copied across file systems);
    ``check(shard_dir)`` raises when a shard was made under another configuration; ``finish(tmp,
    shard_dirs)`` writes the stage's remaining files into the new folder. WsssError, before anything
    is written, naming the missing shards or the shard whose images are not its block.
    """
    check_count(count, len(names))
    root = shards_root(target)
    shards = [Shard(i, count) for i in range(1, count + 1)]
    missing = [s.name for s in shards if not shard_dir(target, s).is_dir()]
    if missing:
        raise WsssError(f"{root}: shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing; run "
                        f"`wsss {stage} --shard I/{count}` for each before `--gather {count}`")
    dirs = [shard_dir(target, s) for s in shards]
    for shard, folder in zip(shards, dirs):
        check(folder)
        have = sorted(p.stem for p in (folder / folders[0]).iterdir())
        want = sorted(shard.take(names))
        if have != want:
            lost, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            raise WsssError(f"{folder}: holds {len(have)} images, its block has {len(want)}"
                            + (f"; missing {', '.join(lost[:5])}" if lost else "")
                            + (f"; not of this block {', '.join(extra[:5])}" if extra else ""))
    with atomic_path(target, directory=True) as tmp:
        for sub in folders:
            (tmp / sub).mkdir()
            for folder in dirs:
                for src in sorted((folder / sub).iterdir()):
                    _link(src, tmp / sub / src.name)
        finish(tmp, dirs)
    shutil.rmtree(root)


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copy2(src, dst)
