"""Shard arithmetic of `wsss infer|crf --shard I/N` (wsss.stages.shards)."""

from __future__ import annotations

import pytest

from wsss.errors import WsssError
from wsss.stages.shards import Shard, shard_dir, shards_root


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
