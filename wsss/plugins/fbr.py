"""FBR (fine-grained background representation; Yin et al., TCSVT 2024) as a training plug-in.

``plugins.fbr`` (spec: seed-methods.md, "FBR"):

- two projection heads (1x1 convolutions of the deep features, ``proj_dim`` 128): one for the
  foreground, one for the background; ``decorrelate``: the mean absolute cosine between the two
  projections of every pixel (weight ``decorrelate_weight`` 0.1);
- **NROIs**: per image, k-means (scikit-learn, ``clusters`` K = 8) over the background pixels'
  background projections; the L2-normalised centroids enter a FIFO memory bank of ``bank_size``
  entries (a buffer: saved with the checkpoint, restored on resume) after the step has used it;
- ``nroi``: pixel-to-NROI InfoNCE: anchors are the uncertain foreground pixels, the positive is
  their class prototype, the negatives ``negatives`` (256) NROIs drawn from the bank; temperature
  ``temperature`` 0.5, weight ``nroi_weight`` (0.01-0.05);
- ``active``: active foreground negative sampling: for the same anchors, ``negatives`` pixels of
  the *other* classes' confident foreground, drawn in proportion to softmax(similarity to the
  anchor's class prototype / ``temperature``); weight ``active_weight`` 0.1.

Pixel roles come from the same CAM as RTC's (``wsss.plugins.rtc.rtc_cam``: WS-FCN's masks,
max-normalised, present classes only), at the deep features' resolution: background where the
largest foreground score is below ``bg_below``, confident foreground of the arg-max class at or
above ``fg_above``, uncertain foreground in between. Prototypes: the mean foreground projection of
each class's confident pixels over the batch, L2-normalised and detached. ``bg_below``, ``fg_above``
and the projection heads' form are ours (the paper builds on AMN's CAMs and gives none for WS-FCN).

The public code detaches the features in its contrast terms (no gradient reaches the network)
and takes the cosine along the wrong axis. ``public_code_contrast: false`` (the default) is the
faithful version: live anchors, cosines over the feature axis; ``true`` reproduces the public code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.errors import WsssError
from wsss.model.layers import resize_to
from wsss.plugins.base import Step, TrainingPlugin, info_nce, zero_like_graph
from wsss.plugins.rtc import rtc_cam


def nrois(features: Tensor, clusters: int, seed: int) -> Tensor:
    """k-means centroids (min(clusters, N), D) of the rows of ``features`` (N, D), L2-normalised.

    scikit-learn's KMeans (k-means++ with its default single initialisation, ``seed``); fewer rows
    than clusters give one centroid per row. Detached; on the features' device, in their dtype.
    """
    from sklearn.cluster import KMeans

    x = features.detach().double().cpu().numpy()
    k = min(clusters, x.shape[0])
    if k == 0:
        return features.new_zeros(0, features.shape[1])
    centres = KMeans(n_clusters=k, random_state=seed).fit(x).cluster_centers_
    return F.normalize(torch.from_numpy(centres).to(features))


class FIFOBank(nn.Module):
    """A first-in-first-out memory of ``size`` vectors of ``dim``; its buffers are saved with the checkpoint."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("items", torch.zeros(size, dim))
        self.register_buffer("next", torch.zeros((), dtype=torch.long))  # where the next item goes
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # how many are filled

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def push(self, rows: Tensor) -> None:
        """Append ``rows`` (N, dim), N <= size, overwriting the oldest when full."""
        size, n = self.items.shape[0], rows.shape[0]
        if n > size:
            raise WsssError(f"memory bank: {n} items do not fit a bank of {size}")
        index = (int(self.next) + torch.arange(n, device=rows.device)) % size
        self.items[index] = rows.to(self.items.dtype)
        self.next.fill_((int(self.next) + n) % size)
        self.count.fill_(min(size, int(self.count) + n))

    def filled(self) -> Tensor:
        """The stored items, oldest first (M, dim)."""
        n, size = int(self.count), self.items.shape[0]
        if n < size:
            return self.items[:n]
        return torch.cat([self.items[int(self.next):], self.items[:int(self.next)]])

    def sample(self, k: int) -> Tensor:
        """``k`` stored items drawn uniformly with replacement (torch's global generator)."""
        stored = self.filled()
        return stored[torch.randint(stored.shape[0], (k,), device=stored.device)]


def active_negatives(pool: Tensor, prototype: Tensor, k: int, temperature: float) -> Tensor:
    """``k`` rows of ``pool`` (N, D) drawn with replacement in proportion to softmax(pool . prototype /
    temperature): FBR's active sampling of the foreground negatives most like the anchor's class."""
    weights = torch.softmax(pool @ prototype / temperature, dim=0)
    return pool[torch.multinomial(weights, k, replacement=True)]


class FBR(TrainingPlugin):
    name = "fbr"
    terms = ("decorrelate", "nroi", "active")
    methods = ("single_stage",)

    def __init__(self, cfg: dict, network: nn.Module):
        super().__init__(cfg)
        deep, dim = network.backbone.deep_channels, self.settings["proj_dim"]
        self.fg_head = nn.Conv2d(deep, dim, 1)
        self.bg_head = nn.Conv2d(deep, dim, 1)
        self.bank = FIFOBank(self.settings["bank_size"], dim)

    @classmethod
    def check(cls, cfg: dict) -> None:
        s, batch = cfg["plugins"]["fbr"], cfg["train"]["batch_size"]
        if s["bank_size"] < batch * s["clusters"]:
            raise WsssError(f"key 'plugins.fbr.bank_size': {s['bank_size']} is smaller than one batch's NROIs "
                            f"(train.batch_size {batch} x plugins.fbr.clusters {s['clusters']} = {batch * s['clusters']})")
        if not s["bg_below"] <= s["fg_above"]:
            raise WsssError(f"key 'plugins.fbr.bg_below' ({s['bg_below']}) must not exceed "
                            f"'plugins.fbr.fg_above' ({s['fg_above']})")

    def roles(self, masks: Tensor, labels: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Per pixel at ``size``: (class (B, h, w) 1..C-1 of the arg-max foreground, background mask,
        confident-foreground mask); uncertain foreground is neither."""
        cam = rtc_cam(resize_to(masks.detach().float(), size), labels)
        score, cls = cam[:, 1:].max(1)
        background = score < self.settings["bg_below"]
        confident = score >= self.settings["fg_above"]
        return cls + 1, background, confident

    def losses(self, step: Step) -> dict[str, tuple[Tensor, float]]:
        s = self.settings
        out = step.outputs["crop"]
        deep = out["features"]["deep"].float()
        fg, bg = self.fg_head(deep), self.bg_head(deep)  # (B, D, h, w)
        decorrelate = F.cosine_similarity(fg, bg).abs().mean()  # over the channels

        cls, background, confident = self.roles(out["masks"], step.labels, tuple(deep.shape[2:]))
        public = s["public_code_contrast"]
        fg_rows = fg.permute(0, 2, 3, 1).reshape(-1, fg.shape[1])
        feature_dim = 0 if public else 1  # the public code normalises along the wrong axis
        fg_rows = F.normalize(fg_rows.detach() if public else fg_rows, dim=feature_dim)
        cls, background, confident = cls.flatten(), background.flatten(), confident.flatten()
        uncertain = ~background & ~confident

        protos = {}
        with torch.no_grad():
            for c in cls[confident].unique().tolist():
                mean = fg_rows[confident & (cls == c)].mean(0)
                protos[c] = mean / mean.norm().clamp(min=1e-12)
        # anchors: uncertain pixels of a class that has a prototype (some confident pixel)
        anchor_index = torch.nonzero(uncertain & torch.isin(cls, cls[confident])).flatten()
        anchors = fg_rows[anchor_index]
        positives = torch.stack([protos[c] for c in cls[anchor_index].tolist()]) if len(anchor_index) else anchors
        t, k = s["temperature"], s["negatives"]

        if len(self.bank) > 0 and len(anchor_index) > 0:
            nroi = info_nce(anchors, positives, self.bank.sample(k), t)
        else:
            nroi = zero_like_graph(fg)

        active = zero_like_graph(fg)
        if len(anchor_index) > 0 and len(protos) > 1:
            losses = []
            for c in cls[anchor_index].unique().tolist():
                with torch.no_grad():
                    drawn = active_negatives(fg_rows[confident & (cls != c)], protos[c], k, t)
                mine = cls[anchor_index] == c
                losses.append(info_nce(anchors[mine], positives[mine], drawn, t) * mine.sum())
            active = torch.stack(losses).sum() / len(anchor_index)

        with torch.no_grad():  # NROIs of this batch join the bank after it was used
            bg_rows = F.normalize(bg)  # k-means on the directions of the background projections
            bg_mask = background.view(bg.shape[0], -1)
            for i in range(bg.shape[0]):
                rows = bg_rows[i].flatten(1).t()[bg_mask[i]]  # (background pixels, D)
                if rows.shape[0] > 0:
                    seed = int(torch.randint(2**31 - 1, ()).item())  # from torch's generator: resumes exactly
                    self.bank.push(nrois(rows, s["clusters"], seed))
        return {"decorrelate": (decorrelate, s["decorrelate_weight"]), "nroi": (nroi, s["nroi_weight"]),
                "active": (active, s["active_weight"])}
