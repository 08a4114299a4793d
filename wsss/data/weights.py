"""ImageNet weights for the backbones: a registry of files, fetched into the download cache.

Only WR38 needs a file of its own: ``ilsvrc-cls_rna-a1_cls1000_ep-0001.pth`` (about 402 MB,
converted from MXNet, published with the SSSS code). Its authors publish no MD5, so the registry
records ``md5=None`` and the file is accepted as downloaded (its loading checks the keys).
The ResNets use torchvision's own weights and the small backbone is trained from scratch: for
them no file is fetched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from wsss.data.download import download, reachable
from wsss.errors import WsssError

CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class WeightsFile:
    filename: str
    url: str
    md5: str | None
    env: str


REGISTRY = {
    "wr38": WeightsFile(
        "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth",
        "https://download.visinf.tu-darmstadt.de/data/2020-cvpr-araslanov-1-stage-wseg/models/"
        "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth",
        None,
        "WSSS_WR38_URL",
    ),
}


def fetch_weights(backbone: str, downloads: str | Path, local: str | None = None, *,
                  progress: bool = True) -> Path | None:
    """The weights file for ``backbone``: ``local`` if given (it must exist), else from the cache
    ``downloads``, downloading it there if needed. None for backbones without a weights file.
    """
    if local:
        path = Path(local)
        if not path.is_file():
            raise WsssError(f"key 'model.weights': {path} is not a file")
        return path
    entry = REGISTRY.get(backbone)
    if entry is None:
        return None
    dest = Path(downloads) / entry.filename
    if dest.is_file():
        return dest
    url = os.environ.get(entry.env) or entry.url
    reason = reachable(url, CONNECT_TIMEOUT)
    if reason is not None:
        raise WsssError(
            f"cannot download the {backbone} ImageNet weights '{entry.filename}': no connection ({reason}). "
            f"Provide them in one of these ways: set the key 'model.weights' to a local copy of the file "
            f"(e.g. -S model.weights=/path/{entry.filename}); put it into the download cache as {dest}; "
            f"make the network reach {entry.url}, or name a mirror in the environment variable {entry.env}"
        )
    return download(url, dest, entry.md5, progress=progress)
