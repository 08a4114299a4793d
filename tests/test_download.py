"""Downloads against a local HTTP server: MD5, resume, Range fallback; local copies; no network."""

from __future__ import annotations

import hashlib

import pytest

from conftest import voc_data_cfg
from wsss.data import download as dl
from wsss.data.voc import prepare_voc
from wsss.data.weights import REGISTRY, fetch_weights
from wsss.errors import WsssError

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # about 1 MiB
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def served(http_server):
    http_server.files["/archive.tar"] = PAYLOAD
    return http_server


def test_md5sum(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert dl.md5sum(path) == PAYLOAD_MD5


def test_good_md5(served, tmp_path):
    dest = tmp_path / "cache" / "archive.tar"
    assert dl.download(served.url("/archive.tar"), dest, PAYLOAD_MD5, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("archive.tar.part").exists()
    assert [(r["range"], r["sent"]) for r in served.log] == [(None, len(PAYLOAD))]
    dl.download(served.url("/archive.tar"), dest, PAYLOAD_MD5, progress=False)
    assert len(served.log) == 1  # a verified file is not fetched again


def test_wrong_md5_moves_the_file_aside(served, tmp_path):
    dest = tmp_path / "archive.tar"
    wrong = "0" * 32
    with pytest.raises(WsssError) as err:
        dl.download(served.url("/archive.tar"), dest, wrong, progress=False)
    message = str(err.value)
    assert "archive.tar" in message and wrong in message and PAYLOAD_MD5 in message
    assert not dest.exists()
    assert dest.with_name("archive.tar.bad").read_bytes() == PAYLOAD


def test_resume_requests_only_the_remaining_bytes(served, tmp_path):
    dest = tmp_path / "archive.tar"
    dest.with_name("archive.tar.part").write_bytes(PAYLOAD[:300_000])
    dl.download(served.url("/archive.tar"), dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert served.log == [{"path": "/archive.tar", "range": "bytes=300000-", "sent": len(PAYLOAD) - 300_000}]


def test_interrupted_download_is_kept_and_resumed(served, tmp_path):
    dest = tmp_path / "archive.tar"
    served.set(cut_after=200_000)
    with pytest.raises(WsssError, match="resume"):
        dl.download(served.url("/archive.tar"), dest, PAYLOAD_MD5, progress=False)
    part = dest.with_name("archive.tar.part")
    assert not dest.exists() and part.stat().st_size == 200_000
    dl.download(served.url("/archive.tar"), dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert served.log[-1]["range"] == "bytes=200000-"
    assert served.log[-1]["sent"] == len(PAYLOAD) - 200_000


def test_complete_part_file_is_finished_without_data(served, tmp_path):
    dest = tmp_path / "archive.tar"
    dest.with_name("archive.tar.part").write_bytes(PAYLOAD)
    dl.download(served.url("/archive.tar"), dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD and served.log[-1]["sent"] == 0


def test_server_without_range_support_restarts(served, tmp_path):
    served.set(ignore_range=True)
    dest = tmp_path / "archive.tar"
    dest.with_name("archive.tar.part").write_bytes(b"garbage" * 1000)
    dl.download(served.url("/archive.tar"), dest, PAYLOAD_MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_http_error_names_the_url(served, tmp_path):
    with pytest.raises(WsssError, match="missing.tar.*404"):
        dl.download(served.url("/missing.tar"), tmp_path / "missing.tar", None, progress=False)


def test_local_archives_need_no_server(mini_archives, tmp_path, closed_url, monkeypatch):
    source = mini_archives["voc"].parent
    monkeypatch.setenv("WSSS_VOC_URL", closed_url)
    monkeypatch.setenv("WSSS_SBD_URL", closed_url)
    info = prepare_voc(voc_data_cfg(tmp_path, source=str(source)), tmp_path / "voc",
                       md5s=mini_archives["md5s"], progress=False)
    assert info["splits"]["train_aug"] == 6
    assert not (tmp_path / "downloads").exists()


def test_no_network_and_no_source_fails_with_instructions(tmp_path, closed_url, monkeypatch):
    """How fast it gives up is a benchmark figure: tests/benchmarks/bench_download.py."""
    monkeypatch.setenv("WSSS_VOC_URL", closed_url)
    monkeypatch.setenv("WSSS_SBD_URL", closed_url)
    with pytest.raises(WsssError) as err:
        prepare_voc(voc_data_cfg(tmp_path), tmp_path / "voc", progress=False)
    message = str(err.value)
    for needle in ("data.source", "VOCtrainval_11-May-2012.tar", "benchmark.tgz", "WSSS_VOC_URL", "WSSS_SBD_URL",
                   "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", "data.downloads"):
        assert needle in message
    assert not (tmp_path / "voc").exists() or not any((tmp_path / "voc").iterdir())


def test_reachable(http_server, closed_url):
    assert dl.reachable(http_server.url("/")) is None
    assert dl.reachable(closed_url, timeout=2) is not None
    assert "not an http" in dl.reachable("ftp://example.invalid/x")


# --------------------------------------------------------------------------- ImageNet weights

def test_weights_registry_and_local_copy(tmp_path):
    assert REGISTRY["wr38"].filename == "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth" and REGISTRY["wr38"].md5 is None
    for backbone in ("small", "resnet50", "resnet101"):
        assert fetch_weights(backbone, tmp_path, None) is None
    local = tmp_path / "my-weights.pth"
    local.write_bytes(b"w")
    assert fetch_weights("wr38", tmp_path, str(local)) == local
    with pytest.raises(WsssError, match="model.weights.*nope.pth"):
        fetch_weights("wr38", tmp_path, str(tmp_path / "nope.pth"))


def test_weights_download_from_a_mirror(http_server, tmp_path, monkeypatch):
    http_server.files["/w.pth"] = PAYLOAD
    monkeypatch.setenv("WSSS_WR38_URL", http_server.url("/w.pth"))
    path = fetch_weights("wr38", tmp_path / "downloads", None, progress=False)
    assert path == tmp_path / "downloads" / REGISTRY["wr38"].filename and path.read_bytes() == PAYLOAD
    assert fetch_weights("wr38", tmp_path / "downloads", None, progress=False) == path
    assert len(http_server.log) == 1


def test_weights_without_network(tmp_path, closed_url, monkeypatch):
    monkeypatch.setenv("WSSS_WR38_URL", closed_url)
    with pytest.raises(WsssError, match="model.weights") as err:
        fetch_weights("wr38", tmp_path, None, progress=False)
    assert "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth" in str(err.value) and "WSSS_WR38_URL" in str(err.value)
