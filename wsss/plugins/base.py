"""The training plug-in seam: what a plug-in may do during training, and the set a run trains with.

The trainer owns the loop (data, forward, backward, optimiser, checkpoints); a plug-in owns an
addition to what is trained, the split of detectron2's hooks and mmsegmentation's auxiliary heads
and loss registry. Per training step a plug-in may:

- ask for **extra views** of the batch (``extra_views``: e.g. RTC's resize of the crop); the network
  runs on each with shared weights, and the plug-in reads every view's output;
- **adjust the pseudo-labels** of the crop (``adjust_pseudo``: e.g. RTC's two background thresholds);
- return **named loss terms** (``losses``), each with its weight; every term is a column
  ``<plugin>.<term>`` of the training curve (the unweighted value), and the weighted sum is added
  to the network's loss;
- act **after the optimiser step** (``after_step``, given the trained network: e.g. update an EMA
  teacher, ``wsss.plugins.teacher``).

Across steps a plug-in is an ``nn.Module``: its sub-modules are **trainable heads** (the optimiser
puts their parameters with the new layers, with the new-layer LR multipliers and weight decay),
its registered buffers are **state** (a memory bank, a queue, a running statistic); a sub-module
whose parameters do not require gradients (an EMA teacher) is state too. All are saved
with every checkpoint and restored on resume; draws from torch's global generator are restored
with it.

With no plug-in switched on, the trainer runs exactly the code it runs without this seam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from wsss.errors import WsssError


@dataclass
class Step:
    """What a plug-in sees of one training step (every tensor on the training device).

    ``images``: (B, 3, H, W) the normalised crop; ``raw``: (B, 3, H, W) its RGB values in [0, 1] (before normalisation);
    ``labels``: (B, C-1) multi-hot image labels; ``outputs``: view name -> the network's output
    (``logits``, ``masks``, ``cls``, ``features``; see ``wsss.model.network``), ``"crop"`` being
    the batch itself; ``views``: extra view name -> ``(images, raw)``; ``pseudo``: (B, H, W) the
    crop's pseudo-labels after every plug-in's adjustment, or None before the segmentation term is on;
    ``refined``: (B, C, H, W) the PAMR-refined masks they come from (None likewise).
    """

    epoch: int
    seg_on: bool
    images: Tensor
    raw: Tensor
    labels: Tensor
    outputs: dict[str, dict] = field(default_factory=dict)
    views: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    pseudo: Tensor | None = None
    refined: Tensor | None = None


class TrainingPlugin(nn.Module):
    """A training addition switched on by ``plugins.<name>.enabled`` in params.yaml.

    Subclasses set ``name`` (its section of params.yaml, whose keys the schema types), ``terms``
    (its loss terms, in curve order) and ``methods`` (the ``model.method`` values it can serve),
    and implement ``losses``. ``self.cfg`` is the whole configuration, ``self.settings`` its section.
    The constructor gets the network being trained to size its heads (``network.backbone``'s
    ``deep_channels`` and ``shallow_channels``); it must not keep it (it would become a sub-module),
    and passes only ``cfg`` on to this one.
    """

    name: ClassVar[str] = ""
    terms: ClassVar[tuple[str, ...]] = ()
    methods: ClassVar[tuple[str, ...]] = ("single_stage",)

    def __init__(self, cfg: dict, network: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.settings = dict(cfg["plugins"][self.name])

    @classmethod
    def check(cls, cfg: dict) -> None:
        """Refuse a configuration this plug-in cannot serve (WsssError naming the key); before training."""

    def extra_views(self, images: Tensor, raw: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Extra views of the batch: name -> (normalised images, raw RGB). None by default."""
        return {}

    def adjust_pseudo(self, pseudo: Tensor, refined: Tensor, labels: Tensor) -> Tensor:
        """The crop's pseudo-labels (B, H, W), given the PAMR-refined masks (B, C, H, W). Unchanged by default."""
        return pseudo

    def losses(self, step: Step) -> dict[str, tuple[Tensor, float]]:
        """Loss terms: term name (one of ``terms``) -> (scalar tensor, weight)."""
        raise NotImplementedError

    def after_step(self, network: nn.Module) -> None:
        """Called after every optimiser step with the trained network (its updated weights). Nothing by default."""


class PluginSet(nn.Module):
    """The plug-ins a configuration switches on, in ``plugins`` order; empty when none is."""

    def __init__(self, plugins: list[TrainingPlugin]):
        super().__init__()
        self.plugins = nn.ModuleDict({p.name: p for p in plugins})

    def __bool__(self) -> bool:
        return len(self.plugins) > 0

    @property
    def columns(self) -> list[str]:
        """The training-curve columns of every term: ``<plugin>.<term>``."""
        return [f"{p.name}.{term}" for p in self.plugins.values() for term in p.terms]

    def extra_views(self, images: Tensor, raw: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        views: dict[str, tuple[Tensor, Tensor]] = {}
        for plugin in self.plugins.values():
            for name, view in plugin.extra_views(images, raw).items():
                if name == "crop" or name in views:
                    raise WsssError(f"plug-in '{plugin.name}': view name '{name}' is already taken")
                views[name] = view
        return views

    def adjust_pseudo(self, pseudo: Tensor, refined: Tensor, labels: Tensor) -> Tensor:
        for plugin in self.plugins.values():
            pseudo = plugin.adjust_pseudo(pseudo, refined, labels)
        return pseudo

    def losses(self, step: Step) -> dict[str, tuple[Tensor, float]]:
        """Every plug-in's terms as ``<plugin>.<term>`` -> (value, weight)."""
        terms: dict[str, tuple[Tensor, float]] = {}
        for plugin in self.plugins.values():
            got = plugin.losses(step)
            if set(got) != set(plugin.terms):
                raise WsssError(f"plug-in '{plugin.name}' returned terms {sorted(got)}, not its declared {list(plugin.terms)}")
            for term in plugin.terms:
                value, weight = got[term]
                terms[f"{plugin.name}.{term}"] = (value, float(weight))
        return terms

    def after_step(self, network: nn.Module) -> None:
        for plugin in self.plugins.values():
            plugin.after_step(network)

    @staticmethod
    def total(terms: dict[str, tuple[Tensor, float]]) -> Tensor | float:
        """The weighted sum of the terms (0.0 when there are none)."""
        total: Tensor | float = 0.0
        for value, weight in terms.values():
            total = total + weight * value
        return total


def zero_like_graph(x: Tensor) -> Tensor:
    """A scalar 0 that is part of ``x``'s graph (a term with nothing to average still back-propagates)."""
    return (x * 0.0).sum()


def top_fraction_mean(errors: Tensor, fraction: float) -> Tensor:
    """Mean of the largest ``max(1, floor(fraction * N))`` values of ``errors`` (any shape, N elements).

    RTC's "top 20 % / 80 % errors": only the hardest pixels count. ``fraction`` in (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise WsssError(f"top_fraction_mean: fraction {fraction!r} must lie in (0, 1]")
    flat = errors.flatten()
    if flat.numel() == 0:
        return zero_like_graph(errors)
    k = max(1, int(fraction * flat.numel()))
    return flat.topk(k).values.mean()


def info_nce(anchors: Tensor, positives: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """InfoNCE: mean over anchors of -log(exp(a.p/t) / (exp(a.p/t) + sum_n exp(a.n/t))).

    ``anchors`` (N, D), ``positives`` (N, D) (one per anchor), ``negatives`` (N, K, D) or (K, D)
    (shared); similarities are plain dot products (pass L2-normalised vectors for cosines).
    With no anchor the result is 0 in the graph of ``anchors``.
    """
    if anchors.shape[0] == 0:
        return zero_like_graph(anchors)
    pos = (anchors * positives).sum(1, keepdim=True)
    if negatives.dim() == 2:
        neg = anchors @ negatives.t()
    else:
        neg = (negatives @ anchors[:, :, None])[:, :, 0]
    logits = torch.cat([pos, neg], dim=1) / temperature
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()
