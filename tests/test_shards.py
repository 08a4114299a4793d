"""Shard arithmetic of `wsss infer|crf --shard I/N` (wsss.stages.shards)."""

from __future__ import annotations

import pytest

from wsss.errors import WsssError
from wsss.stages import shards as shards_module
from wsss.stages.shards import Shard, check_count, gather, shard_dir, shards_root


@pytest.mark.parametrize("images, count", [(24, 3), (24, 5), (7, 7), (1449, 8), (10, 1)])
def test_the_blocks_are_contiguous_and_cover_every_image_once(images, count):
    items = [f"img{i:05d}" for i in range(images)]
    blocks = [Shard(i, count).take(items) for i in range(1, count + 1)]
    assert [x for block in blocks for x in block] == items
    assert all(blocks) and max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_both_spellings_parse_and_name_the_shard_as_snakemake_does():
    assert Shard.parse("2/8", 100) == Shard(2, 8) == Shard.parse("2-of-8", 100)
    assert Shard(2, 8).name == "2-of-8"


@pytest.mark.parametrize("text, message", [
    ("0/4", "--shard 0/4: the shard index must be 1..4"),
    ("5/4", "--shard 5/4: the shard index must be 1..4"),
    ("1/0", "--shard 1/0: the number of shards must be at least 1"),
    ("a/b", "--shard 'a/b': expected I/N"),
    ("3", "--shard '3': expected I/N"),
    ("1/11", "11 shards for 10 images"),
])
def test_a_bad_shard_is_named(text, message):
    with pytest.raises(WsssError, match=message.replace("(", r"\(")):
        Shard.parse(text, 10)


def test_shards_live_beside_the_stage_folder(tmp_path):
    target = tmp_path / "results" / "toy" / "val" / "infer"
    assert shards_root(target) == tmp_path / "results" / "toy" / "val" / "infer.shards"
    assert shard_dir(target, Shard(3, 4)) == shards_root(target) / "3-of-4"


def test_one_shard_and_as_many_shards_as_images_are_allowed():
    assert Shard.parse("1/1", 5) == Shard(1, 1) and Shard(1, 1).take([1, 2, 3]) == [1, 2, 3]
    assert Shard.parse("7/7", 7) == Shard(7, 7)
    with pytest.raises(WsssError, match=r"^--gather 0: the number of shards must be at least 1$"):
        check_count(0, 5)
    with pytest.raises(WsssError, match=r"^6 shards for 5 images: every shard needs at least one image$"):
        check_count(6, 5)


NAMES = [f"img{i:02d}" for i in range(14)]  # two shards of 7


def make_shards(target, blocks: dict[int, list[str]], count: int = 2) -> None:
    for index, names in blocks.items():
        folder = shard_dir(target, Shard(index, count)) / "masks"
        folder.mkdir(parents=True)
        for name in names:
            (folder / f"{name}.png").write_text(name)


def gather_into(target, count: int = 2, finished: list | None = None):
    def finish(tmp, dirs):
        (tmp / "done.txt").write_text(",".join(d.name for d in dirs))
        if finished is not None:
            finished.append(dirs)

    gather(target, count, NAMES, ["masks"], "infer", lambda folder: None, finish)


def test_a_gather_names_every_missing_shard(tmp_path):
    target = tmp_path / "infer"
    make_shards(target, {2: NAMES[7:]}, count=3)
    with pytest.raises(WsssError, match=r"infer.shards: shards 1-of-3, 3-of-3 missing; run `wsss infer --shard I/3` "
                                        r"for each before `--gather 3`$"):
        gather_into(target, 3)
    make_shards(target, {1: NAMES[:4]}, count=3)
    with pytest.raises(WsssError, match=r"infer.shards: shard 3-of-3 missing; run"):
        gather_into(target, 3)
    assert not target.exists()


def test_a_gather_names_what_a_shard_lacks_and_holds_beyond_its_block(tmp_path):
    target = tmp_path / "infer"
    make_shards(target, {1: NAMES[7:], 2: NAMES[7:]})  # the second half twice
    with pytest.raises(WsssError) as err:
        gather_into(target)
    assert str(err.value) == (f"{shard_dir(target, Shard(1, 2))}: holds 7 images, its block has 7; missing "
                              f"{', '.join(NAMES[:5])}; not of this block {', '.join(NAMES[7:12])}")
    target2 = tmp_path / "crf"
    make_shards(target2, {1: NAMES[:6], 2: NAMES[7:]})
    with pytest.raises(WsssError) as err:
        gather_into(target2)
    assert str(err.value) == f"{shard_dir(target2, Shard(1, 2))}: holds 6 images, its block has 7; missing img06"
    target3 = tmp_path / "pseudo"
    make_shards(target3, {1: NAMES[:8], 2: NAMES[7:]})  # its block and one more
    with pytest.raises(WsssError) as err:
        gather_into(target3)
    assert str(err.value) == f"{shard_dir(target3, Shard(1, 2))}: holds 8 images, its block has 7; not of this block img07"
    assert not target.exists() and not target2.exists() and not target3.exists()


def test_a_gather_links_or_copies_every_file_then_removes_the_shards(tmp_path, monkeypatch):
    for linked in (True, False):
        target = tmp_path / f"infer-{linked}"
        make_shards(target, {1: NAMES[:7], 2: NAMES[7:]})
        if not linked:  # another file system: the files are copied
            monkeypatch.setattr(shards_module.os, "link", lambda src, dst: (_ for _ in ()).throw(OSError("cross-device")))
        finished: list = []
        gather_into(target, finished=finished)
        assert sorted(p.stem for p in (target / "masks").iterdir()) == NAMES
        assert all((target / "masks" / f"{n}.png").read_text() == n for n in NAMES)
        assert (target / "done.txt").read_text() == "1-of-2,2-of-2" and len(finished) == 1
        assert not shards_root(target).exists()
