"""The ablation benchmark's design file (``workflow/benchmark.yaml``): which runs exist and how each is configured.

A run is one configuration (``variants``) trained with one seed (``seeds``); each run is then
inferred in every ``inference`` mode, each evaluated without and with CRF. Every run's configuration
is params.yaml, then the design's shared ``params``, then its variant's and mode's ``params``, all
dotted keys typed as ``wsss <stage> -S`` reads them. A variant with ``train: supervise`` is trained by
``wsss supervise`` (ground-truth masks) instead of ``pretrain`` + ``train``.

With a ``backbone`` entry, each seed first trains one backbone for classification (``wsss pretrain``
with the shared ``params`` and then ``backbone.params``), the stand-in for the ImageNet weights of the
paper's setting; every run of that seed starts from it (``model.pretrained=true``,
``model.weights=<its checkpoint>``), so the configurations differ in their heads only.

A variant with its own ``seeds`` (a subset of the design's) runs with those only: the paper's ladder
can take fewer seeds than the comparisons that need more. A ``paired`` entry names variants that the
report compares with ``reference`` seed by seed (the per-seed difference of mIoU, its mean and 95 %
interval over the seeds both have, and the training cost as a ratio to the reference's): the training
plug-ins, which differ from the reference in their additions only.

A ``backbones`` entry adds more shared backbones by name (each trained per seed like ``backbone``, in
``RUNS/backbone_<name>/s<seed>``); a variant with ``backbone: <name>`` starts from that one instead, for
a variant on another backbone architecture (a ViT beside the CNN).

A ``plugins`` entry holds more variants (written like ``variants``), reported on request only
(``results/benchmark/plugins.md``, ``wsss benchmark-plugins``) so that adding one never re-runs the main
table: each with a ``baseline`` (a variant of either entry) is compared with it seed by seed as the
``paired`` variants are with the reference, and a variant without one is a baseline for the others.

A ``probes`` entry names more inference modes (``probes.inference``, written like ``inference``) that
are run, on request only, on the trained models of some variants (``probes.variants``): diagnostics
such as one scale at a time, which the main report does not wait for.

A ``two_stage`` entry adds the second stage, also on request only (``results/benchmark/two_stage.md``):
the trained runs of ``two_stage.variants`` export the pseudo-masks of the training split
(``wsss pseudo`` in the inference mode ``two_stage.mode``), which are scored and retrained on
(``wsss retrain`` with ``two_stage.params``, ``retrain.seed`` = the seed), the second stage then
inferred, refined and evaluated in the same mode. Its ceiling is the same trainer, network and
schedule on the ground-truth masks (``wsss retrain --ground-truth``) over ``two_stage.ceiling_seeds``,
and ``two_stage.plateau`` lists budgets (``retrain.iterations``) of ground-truth runs of the first
ceiling seed that show where the ceiling's validation mIoU stops rising. Each of these second-stage
runs is a folder under ``RUNS`` (a "chain"): ``<variant>/s<seed>/two_stage``, ``ceiling/s<seed>``,
``plateau/i<iterations>``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from wsss import config as params, provenance
from wsss.errors import WsssError

TRAINERS = ("weak", "supervise")
KEYS = {"seeds", "params", "backbone", "backbones", "variants", "plugins", "inference", "probes", "reference",
        "upper_bound", "qualitative", "paired", "two_stage"}
TWO_STAGE_KEYS = {"variants", "mode", "params", "ceiling_seeds", "plateau"}
VARIANT_KEYS = ("label", "params", "train", "seeds", "backbone")
PLUGIN_KEYS = (*VARIANT_KEYS, "baseline")  # a variant of the on-request ``plugins`` entry
MIN_PAIRED_SEEDS = 2  # a per-seed difference needs two seeds for an interval
RUNS = "results/benchmark/runs"                     # one folder per run: <variant>/s<seed>
BACKBONE_NAME = "backbone"                          # the shared backbone's folder: not a variant name
BACKBONE_RUN = f"{RUNS}/{{backbone}}/s{{seed}}"  # a shared backbone of one seed: {backbone} is backbone_folder()
CEILING_NAME, PLATEAU_NAME = "ceiling", "plateau"  # the second stage's ground-truth runs: not variant names
GROUND_TRUTH_PATTERN = rf"(?:{CEILING_NAME}/s\d+|{PLATEAU_NAME}/i\d+)"  # for Snakemake's wildcards
CHAIN_PATTERN = rf"(?:\w+/s\d+/two_stage|{GROUND_TRUTH_PATTERN})"
TWO_STAGE_NAME = "two_stage"  # a chain's folder under its weak run: not a mode name
SCORED_ALIKE = ("infer", "crf", "eval", "retrain")  # sections every second-stage run of a design must share
CHAIN = re.compile(rf"(?:(?P<variant>\w+)/s(?P<seed>\d+)/two_stage|{CEILING_NAME}/s(?P<ceiling>\d+)"
                   rf"|{PLATEAU_NAME}/i(?P<iterations>\d+))")


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    params: dict
    trainer: str  # weak (pretrain + train) | supervise
    seeds: list[int]  # the seeds it runs with (the design's, or its own subset)
    backbone: str | None = None  # the named shared backbone it starts from (``backbones``); None: ``backbone``
    baseline: str | None = None  # the variant it is paired with in the plug-in report
    on_request: bool = False  # in the ``plugins`` entry: reported by plugins.md only, not the main table


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    params: dict


@dataclass(frozen=True)
class TwoStage:
    variants: list[str]    # the variants whose trained runs give pseudo-masks
    mode: str              # the inference mode of the pseudo-masks and of the second stage's scoring
    params: dict           # the second stage's settings (retrain.*)
    ceiling_seeds: list[int]  # seeds of the ground-truth ceiling
    plateau: list[int]     # retrain.iterations of the first ceiling seed's budget sweep


@dataclass(frozen=True)
class Design:
    path: Path
    seeds: list[int]
    params: dict
    variants: dict[str, Variant]
    modes: dict[str, Mode]
    reference: str        # the variant the ordering checks and per-class figure are about (WS-FCN)
    upper_bound: str      # the fully supervised variant
    qualitative: int      # how many validation images (the first of the sorted split) the example page shows
    backbone: dict | None = None  # params of the shared per-seed backbone run; None: every run starts from scratch
    probes: dict[str, Mode] = field(default_factory=dict)  # inference modes run on request only (diagnostics)
    probe_variants: list[str] = field(default_factory=list)  # the variants the probes run on
    paired: list[str] = field(default_factory=list)  # the variants compared with the reference seed by seed
    two_stage: TwoStage | None = None  # the second stage's runs, on request only
    backbones: dict[str, dict] = field(default_factory=dict)  # more shared backbones by name: their params

    @property
    def ladder(self) -> list[str]:
        """The variants of the main table (``variants``), in design order; not the on-request ``plugins``."""
        return [name for name, v in self.variants.items() if not v.on_request]

    @property
    def plugin_variants(self) -> list[str]:
        """The on-request variants (``plugins``), in design order."""
        return [name for name, v in self.variants.items() if v.on_request]

    @property
    def plugin_pairs(self) -> list[tuple[str, str]]:
        """(variant, its baseline) for every on-request variant with a ``baseline``."""
        return [(name, self.variants[name].baseline) for name in self.plugin_variants
                if self.variants[name].baseline is not None]

    @property
    def plugin_report_variants(self) -> list[str]:
        """What the plug-in report shows: the main-table baselines its variants name, then its variants."""
        named = [b for _, b in self.plugin_pairs if not self.variants[b].on_request]
        return list(dict.fromkeys([*named, *self.plugin_variants]))

    @property
    def main_pairs(self) -> list[tuple[str, str]]:
        """(variant, the reference) for every ``paired`` variant of the main table."""
        return [(name, self.reference) for name in self.paired]

    def runs(self, variants: list[str] | None = None) -> list[tuple[str, int]]:
        """(variant, seed) of every trained run, in design order: of ``variants`` if given, else of the main table."""
        return [(v, seed) for v in (variants or self.ladder) for seed in self.variants[v].seeds]

    def paired_seeds(self, variant: str, baseline: str | None = None) -> list[int]:
        """The seeds that ``variant`` and ``baseline`` (default: the reference) both run with."""
        other = self.variants[baseline or self.reference]
        return [s for s in self.variants[variant].seeds if s in other.seeds]

    @property
    def all_modes(self) -> list[str]:
        """The main table's inference modes, then the probes."""
        return [*self.modes, *self.probes]

    def mode(self, name: str) -> Mode:
        """An inference mode of the main table or a probe."""
        return self.modes[name] if name in self.modes else self.probes[name]

    @property
    def backbone_folders(self) -> list[str]:
        """The folder name under ``RUNS`` of every shared backbone: ``backbone``, then ``backbone_<name>``."""
        return ([BACKBONE_NAME] if self.backbone is not None else []) + [backbone_folder(n) for n in self.backbones]

    def backbone_params(self, folder: str) -> dict:
        """The ``params`` of the shared backbone in ``folder`` (a name of :attr:`backbone_folders`)."""
        if folder == BACKBONE_NAME and self.backbone is not None:
            return self.backbone
        name = folder.removeprefix(f"{BACKBONE_NAME}_")
        if folder == name or name not in self.backbones:
            raise WsssError(f"{self.path}: {folder!r} is not a shared backbone of the design "
                            f"({', '.join(self.backbone_folders) or 'none'})")
        return self.backbones[name]

    def backbone_checkpoint(self, seed: int, dataset: str = "toy", folder: str = BACKBONE_NAME) -> str:
        """Where the shared backbone in ``folder`` of ``seed`` is written (its ``wsss pretrain`` checkpoint)."""
        return f"{BACKBONE_RUN.format(backbone=folder, seed=seed)}/{dataset}/pretrain.pt"

    def backbone_overrides(self, seed: int, folder: str = BACKBONE_NAME) -> list[str]:
        """The ``-S`` overrides of the shared backbone run of ``seed`` in ``folder``."""
        return _as_overrides({**self.params, **self.backbone_params(folder), "train.seed": seed})

    def backbone_config(self, params_files: list[str], seed: int, folder: str = BACKBONE_NAME) -> dict:
        """The resolved configuration of the shared backbone run of ``seed`` in ``folder``."""
        return params.load(params_files, self.backbone_overrides(seed, folder))

    def variant_backbone(self, variant: str) -> str | None:
        """The folder of the shared backbone that ``variant``'s runs start from; None: from scratch."""
        name = self.variants[variant].backbone
        if name is not None:
            return backbone_folder(name)
        return BACKBONE_NAME if self.backbone is not None else None

    def overrides(self, variant: str, mode: str | None = None, seed: int | None = None) -> list[str]:
        """The ``-S`` overrides of one run (and inference mode), in the order they apply."""
        merged = dict(self.params)
        merged.update(self.variants[variant].params)
        if mode is not None:
            merged.update(self.mode(mode).params)
        if seed is not None:
            merged["train.seed"] = seed
            folder = self.variant_backbone(variant)
            if folder is not None:
                merged["model.pretrained"] = True
                merged["model.weights"] = self.backbone_checkpoint(seed, folder=folder)
        return _as_overrides(merged)

    def config(self, params_files: list[str], variant: str, mode: str | None = None, seed: int | None = None) -> dict:
        """The resolved configuration of one run, as the stage CLIs will see it."""
        return params.load(params_files, self.overrides(variant, mode, seed))


    def chains(self) -> list[str]:
        """Every second-stage run folder under ``RUNS``: the pseudo-mask chains (variant by variant, seed by
        seed), then the ceiling's seeds, then the plateau's budgets."""
        t = self.two_stage
        if t is None:
            return []
        return ([f"{v}/s{seed}/two_stage" for v, seed in self.runs(t.variants)]
                + [f"{CEILING_NAME}/s{seed}" for seed in t.ceiling_seeds]
                + [f"{PLATEAU_NAME}/i{n}" for n in t.plateau])

    def chain_kind(self, chain: str) -> str:
        """``pseudo`` (a variant's pseudo-mask chain), ``ceiling`` or ``plateau``; WsssError for another folder."""
        match = CHAIN.fullmatch(chain)
        if self.two_stage is None or match is None:
            raise WsssError(f"{self.path}: {chain!r} is not a second-stage run of the design")
        return "pseudo" if match["variant"] is not None else "ceiling" if match["ceiling"] is not None else "plateau"

    def chain_overrides(self, chain: str) -> list[str]:
        """The ``-S`` overrides of every stage of one second-stage run. A pseudo-mask chain is its weak run in
        ``two_stage.mode`` then ``two_stage.params``; the ground-truth runs take the shared ``params``, the mode and
        ``two_stage.params`` (no variant: their network is the second stage's alone)."""
        t, kind, match = self.two_stage, self.chain_kind(chain), CHAIN.fullmatch(chain)
        if kind == "pseudo":
            seed = int(match["seed"])
            if match["variant"] not in t.variants:
                raise WsssError(f"{self.path}: {chain!r}: {match['variant']!r} is not in two_stage.variants")
            return self.overrides(match["variant"], t.mode, seed) + _as_overrides({**t.params, "retrain.seed": seed})
        seed = int(match["ceiling"]) if kind == "ceiling" else t.ceiling_seeds[0]
        merged = {**self.params, **self.modes[t.mode].params, **t.params, "train.seed": seed, "retrain.seed": seed}
        if kind == "plateau":
            merged["retrain.iterations"] = int(match["iterations"])
        return _as_overrides(merged)

    def chain_config(self, params_files: list[str], chain: str) -> dict:
        """The resolved configuration of one second-stage run."""
        return params.load(params_files, self.chain_overrides(chain))


def backbone_folder(name: str) -> str:
    """The folder under ``RUNS`` of the named shared backbone ``name`` (``backbones``)."""
    return f"{BACKBONE_NAME}_{name}"


def _as_overrides(merged: dict) -> list[str]:
    return [f"{key}={typed_value(value)}" for key, value in merged.items()]


def typed_value(value) -> str:
    """A value written so that ``wsss -S`` (YAML) reads it back with the same type."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _mapping(node, where: str) -> dict:
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise WsssError(f"{where}: expected a mapping of dotted keys to values, got {type(node).__name__}")
    return {str(k): v for k, v in node.items()}


def _entries(node, where: str, allowed: tuple[str, ...] = VARIANT_KEYS) -> dict[str, dict]:
    if not isinstance(node, dict) or not node:
        raise WsssError(f"{where}: expected a non-empty mapping of names to entries")
    out = {}
    for name, entry in node.items():
        entry = entry or {}
        if not isinstance(entry, dict):
            raise WsssError(f"{where}.{name}: expected a mapping (label, params)")
        unknown = set(entry) - set(allowed)
        if unknown:
            raise WsssError(f"{where}.{name}: unknown key '{sorted(unknown)[0]}' (allowed: {', '.join(allowed)})")
        out[str(name)] = entry
    return out


def _seeds(node, where: str) -> list[int]:
    if not isinstance(node, list) or not node or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                         for s in node) or len(set(node)) != len(node):
        raise WsssError(f"{where} must be a list of distinct non-negative integers, got {node!r}")
    return node


def _backbone_params(node, where: str) -> dict:
    if not isinstance(node, dict) or set(node) - {"params"}:
        raise WsssError(f"{where}: expected a mapping with one key, 'params', got {node!r}")
    return _mapping(node.get("params"), f"{where}.params")


def _backbones(raw, path: Path) -> dict[str, dict]:
    node = raw.get("backbones") or {}
    if not isinstance(node, dict):
        raise WsssError(f"{path}: key 'backbones': expected a mapping of names to backbone entries, got {node!r}")
    for name in node:
        if not str(name).replace("_", "").isalnum():
            raise WsssError(f"{path}: key 'backbones.{name}': a name must be letters, digits and '_' (a folder name)")
    return {str(name): _backbone_params(entry, f"{path}: key 'backbones.{name}'") for name, entry in node.items()}


def _variants(raw, path: Path, seeds: list[int], backbones: dict) -> dict[str, Variant]:
    """The main table's ``variants``, then the on-request ``plugins``, each checked."""
    entries = [(name, entry, "variants", False) for name, entry in _entries(raw.get("variants"), f"{path}: variants").items()]
    if "plugins" in raw:
        entries += [(name, entry, "plugins", True)
                    for name, entry in _entries(raw["plugins"], f"{path}: plugins", PLUGIN_KEYS).items()]
    variants = {}
    for name, entry, section, on_request in entries:
        where = f"{path}: key '{section}.{name}"
        if name in variants:
            raise WsssError(f"{where}': {name!r} is already a variant (its runs would share a folder)")
        trainer = entry.get("train", "weak")
        if trainer not in TRAINERS:
            raise WsssError(f"{where}.train': {trainer!r} is not allowed (allowed: {', '.join(TRAINERS)})")
        own = _seeds(entry["seeds"], f"{where}.seeds'") if "seeds" in entry else seeds
        if set(own) - set(seeds):
            raise WsssError(f"{where}.seeds': {sorted(set(own) - set(seeds))} not among the design's seeds {seeds}")
        backbone = entry.get("backbone")
        if backbone is not None and backbone not in backbones:
            raise WsssError(f"{where}.backbone': {backbone!r} is not in 'backbones' ({', '.join(backbones) or 'none'})")
        variants[name] = Variant(name, str(entry.get("label", name)), _mapping(entry.get("params"), f"{where}.params'"),
                                 trainer, own, backbone, entry.get("baseline"), on_request)
    for name, v in variants.items():
        if v.baseline is not None and (v.baseline not in variants or v.baseline == name):
            raise WsssError(f"{path}: key 'plugins.{name}.baseline': {v.baseline!r} is not another variant "
                            f"({', '.join(n for n in variants if n != name)})")
    return variants


def _paired(raw, path: Path, variants: dict) -> list[str]:
    names = raw.get("paired", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise WsssError(f"{path}: key 'paired': expected a list of variant names, got {names!r}")
    for name in names:
        if name not in variants:
            raise WsssError(f"{path}: key 'paired': {name!r} is not a variant ({', '.join(variants)})")
    return names


def _modes(node, where: str) -> dict[str, Mode]:
    return {name: Mode(name, str(e.get("label", name)), _mapping(e.get("params"), f"{where}.{name}.params"))
            for name, e in _entries(node, where, ("label", "params")).items()}


def _probes(raw, path: Path, variants: dict, modes: dict) -> tuple[dict[str, Mode], list[str]]:
    if "probes" not in raw:
        return {}, []
    node = raw["probes"]
    if not isinstance(node, dict) or set(node) != {"variants", "inference"}:
        raise WsssError(f"{path}: key 'probes': expected a mapping with the keys 'variants' and 'inference', got {node!r}")
    names = node["variants"]
    if not isinstance(names, list) or not names:
        raise WsssError(f"{path}: key 'probes.variants': expected a non-empty list of variant names, got {names!r}")
    for name in names:
        if name not in variants:
            raise WsssError(f"{path}: key 'probes.variants': {name!r} is not a variant ({', '.join(variants)})")
    probes = _modes(node["inference"], f"{path}: probes.inference")
    for name in probes:
        if name in modes:
            raise WsssError(f"{path}: probe {name!r} is already an inference mode (its runs would share a folder)")
    return probes, [str(n) for n in names]


def _two_stage(raw, path: Path, seeds: list[int], variants: dict, modes: dict) -> TwoStage | None:
    if "two_stage" not in raw:
        return None
    node = raw["two_stage"]
    if not isinstance(node, dict) or set(node) - TWO_STAGE_KEYS or "variants" not in node:
        raise WsssError(f"{path}: key 'two_stage': expected a mapping with 'variants' and any of "
                        f"{', '.join(sorted(TWO_STAGE_KEYS - {'variants'}))}, got {node!r}")
    names = node["variants"]
    if not isinstance(names, list) or not names:
        raise WsssError(f"{path}: key 'two_stage.variants': expected a non-empty list of variant names, got {names!r}")
    for name in names:
        if name not in variants or variants[name].trainer != "weak":
            raise WsssError(f"{path}: key 'two_stage.variants': {name!r} is not a weakly supervised variant "
                            f"({', '.join(v for v in variants if variants[v].trainer == 'weak')})")
    mode = str(node.get("mode", next(reversed(modes))))
    if mode not in modes:
        raise WsssError(f"{path}: key 'two_stage.mode': {mode!r} is not an inference mode ({', '.join(modes)})")
    ceiling = _seeds(node.get("ceiling_seeds", seeds), f"{path}: key 'two_stage.ceiling_seeds'")
    plateau = node.get("plateau", [])
    if not isinstance(plateau, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                for n in plateau) or plateau != sorted(set(plateau)):
        raise WsssError(f"{path}: key 'two_stage.plateau': expected increasing positive iteration counts, got {plateau!r}")
    t_params = _mapping(node.get("params"), f"{path}: two_stage.params")
    for key in t_params:
        if not key.startswith("retrain."):
            raise WsssError(f"{path}: key 'two_stage.params.{key}': only retrain.* keys belong to the second stage "
                            "(the pseudo-masks come from the variant's run as it was trained)")
    return TwoStage([str(n) for n in names], mode, t_params, ceiling, plateau)


def _check_chains(design: Design, params_files: list[str]) -> None:
    """Every second-stage run resolves; all share the ceiling's inference, CRF, evaluation and second-stage keys
    (the seed and a plateau run's budget apart), so that they are scored alike; no plateau budget repeats the
    ceiling's."""
    if design.two_stage is None:
        return
    configs = {}
    for chain in design.chains():
        try:
            configs[chain] = design.chain_config(params_files, chain)
        except WsssError as exc:
            raise WsssError(f"{design.path}: two_stage run {chain!r}: {exc}") from None
    ceiling = f"{CEILING_NAME}/s{design.two_stage.ceiling_seeds[0]}"
    budget = configs[ceiling]["retrain"]["iterations"]
    if budget in design.two_stage.plateau:
        raise WsssError(f"{design.path}: key 'two_stage.plateau': {budget} is the ceiling's own budget "
                        "(retrain.iterations), already run by its first seed")
    def scored(cfg: dict, ignored: set[str]) -> dict:
        flat = {k: v for section in SCORED_ALIKE for k, v in provenance.leaves(cfg[section], section).items()}
        return {k: v for k, v in flat.items() if k not in ignored}

    for chain, cfg in configs.items():  # a plateau run differs from the ceiling in its budget, by design
        ignored = {"retrain.seed"} | ({"retrain.iterations"} if design.chain_kind(chain) == "plateau" else set())
        reference, mine = scored(configs[ceiling], ignored), scored(cfg, ignored)
        for key in sorted(set(reference) | set(mine)):
            if mine.get(key) != reference.get(key):
                raise WsssError(f"{design.path}: two_stage run {chain!r}: key '{key}' is {mine.get(key)!r}, the "
                                f"ceiling's {reference.get(key)!r}: a variant's inference, CRF or second-stage keys "
                                "would score its second stage unlike the ceiling")


def load(path: str | Path, params_files: list[str] | None = None) -> Design:
    """Read and check a design file; with ``params_files``, also resolve every run's configuration."""
    path = Path(path)
    raw = params.load_mapping(path, "benchmark design")
    unknown = set(raw) - KEYS
    if unknown:
        raise WsssError(f"{path}: unknown key '{sorted(unknown)[0]}' (allowed: {', '.join(sorted(KEYS))})")
    seeds = _seeds(raw.get("seeds"), f"{path}: key 'seeds'")
    backbones = _backbones(raw, path)
    variants = _variants(raw, path, seeds, backbones)
    modes = _modes(raw.get("inference"), f"{path}: inference")
    probes, probe_variants = _probes(raw, path, variants, modes)
    for name in list(modes) + list(probes):
        if name == TWO_STAGE_NAME:
            raise WsssError(f"{path}: inference mode name {TWO_STAGE_NAME!r} is taken by the second stage's runs")
    for name in list(variants) + list(modes) + list(probes):
        if not name.replace("_", "").isalnum():
            raise WsssError(f"{path}: name {name!r} must be letters, digits and '_' (it becomes a folder name)")
    backbone = None
    if "backbone" in raw:
        backbone = _backbone_params(raw["backbone"], f"{path}: key 'backbone'")
    ladder = {name: v for name, v in variants.items() if not v.on_request}
    design = Design(path, seeds, _mapping(raw.get("params"), f"{path}: params"), variants, modes,
                    str(raw.get("reference", "")), str(raw.get("upper_bound", "")), int(raw.get("qualitative", 6)),
                    backbone, probes, probe_variants, _paired(raw, path, ladder),
                    _two_stage(raw, path, seeds, ladder, modes), backbones)
    for name in variants:
        if name in (BACKBONE_NAME, CEILING_NAME, PLATEAU_NAME) or name.startswith(f"{BACKBONE_NAME}_"):
            raise WsssError(f"{path}: variant name {name!r} is taken by the benchmark's own runs")
    for key in ("reference", "upper_bound"):
        if getattr(design, key) not in ladder:
            raise WsssError(f"{path}: key '{key}': {getattr(design, key)!r} is not a variant ({', '.join(ladder)})")
    for name, baseline in design.plugin_pairs:
        if len(design.paired_seeds(name, baseline)) < MIN_PAIRED_SEEDS:
            raise WsssError(f"{path}: key 'plugins.{name}.baseline': {name!r} shares "
                            f"{len(design.paired_seeds(name, baseline))} seed(s) with {baseline!r}; a paired difference "
                            f"needs {MIN_PAIRED_SEEDS} or more")
    if variants[design.upper_bound].trainer != "supervise":
        raise WsssError(f"{path}: key 'upper_bound': variant {design.upper_bound!r} must have 'train: supervise'")
    for name in design.paired:
        if name == design.reference:
            raise WsssError(f"{path}: key 'paired': {name!r} is the reference it would be compared with")
        if len(design.paired_seeds(name)) < MIN_PAIRED_SEEDS:
            raise WsssError(f"{path}: key 'paired': {name!r} shares {len(design.paired_seeds(name))} seed(s) with the "
                            f"reference {design.reference!r}; a paired difference needs {MIN_PAIRED_SEEDS} or more")
    if params_files is not None:
        runs = [(variant, mode, "inference") for variant in variants for mode in modes]
        runs += [(variant, probe, "probe") for variant in probe_variants for probe in probes]
        for variant, mode, kind in runs:
            try:
                design.config(params_files, variant, mode, variants[variant].seeds[0])
            except WsssError as exc:
                raise WsssError(f"{path}: variant {variant!r}, {kind} {mode!r}: {exc}") from None
        _check_chains(design, params_files)
        for folder in design.backbone_folders:
            try:
                design.backbone_config(params_files, seeds[0], folder)
            except WsssError as exc:
                raise WsssError(f"{path}: {folder.replace('_', 's.', 1)}: {exc}") from None
    return design
