"""Which parameters made a stage's inputs, and the refusal to run on an input made under others.

Every stage records the resolved configuration it ran with beside its outputs (``prepared.json``'s
``data``, the checkpoints' ``config``, ``infer/config.yaml``, ``crf/config.yaml``). The keys a stage
depends on are declared once in ``workflow/stages.yaml`` (both engines re-run a stage when one of
them changes). A stage that reads another stage's output compares that producer's keys, as
recorded, with its own configuration: the producer's own keys and those of every stage before it
(``after`` in stages.yaml), since a recorded configuration is a whole one. It refuses to run when any
differ: otherwise, run by hand, it would train or score on an input that does not match the
parameters it writes into its own record.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from wsss.config import REPO_ROOT
from wsss.errors import WsssError

STAGES_PATH = REPO_ROOT / "workflow" / "stages.yaml"
# Keys that say how work is run, not what it computes (a result never depends on them): an input
# made with other values of these is not refused.
EXECUTION_KEYS = frozenset({"train.device", "train.workers", "infer.device", "infer.chunk", "crf.workers",
                            "retrain.device", "retrain.workers"})
_MISSING = object()


@lru_cache(maxsize=1)
def _stages() -> dict:
    return yaml.safe_load(STAGES_PATH.read_text())


def stage_keys(stage: str) -> list[str]:
    """The dotted keys of the resolved configuration that ``stage`` depends on (workflow/stages.yaml)."""
    stages = _stages()
    if stage not in stages:
        raise KeyError(f"{stage!r} is not a stage of {STAGES_PATH} ({', '.join(stages)})")
    return list(stages[stage]["params"])


def keys_through(stage: str) -> list[str]:
    """The keys ``stage`` depends on and those of every stage before it (``after`` in workflow/stages.yaml):
    all that went into its outputs."""
    seen: dict[str, None] = {}
    todo = [stage]
    while todo:
        current = todo.pop()
        seen.update(dict.fromkeys(stage_keys(current)))
        todo += _stages()[current].get("after", [])
    return list(seen)


def lookup(cfg: dict, key: str, default: Any = _MISSING) -> Any:
    """The value at a dotted ``key`` of a nested mapping; ``default`` (else KeyError) when absent."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def param_slice(cfg: dict, stage: str) -> dict[str, Any]:
    """``{key: value}`` for every key ``stage`` depends on: what both engines compare to decide a re-run."""
    return {key: lookup(cfg, key) for key in stage_keys(stage)}


def leaves(value: Any, prefix: str) -> dict[str, Any]:
    """``value`` (a nested mapping) as ``{"<prefix>.<dotted key>": leaf}``; a non-mapping is ``{prefix: value}``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(leaves(sub, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def differences(recorded: dict, cfg: dict, stage: str) -> list[str]:
    """``"key: input made with X, params give Y"`` for each leaf key that differs among those that went into
    an output of ``stage`` (``keys_through``), ``EXECUTION_KEYS`` aside, and ``data.toy`` unless the dataset is toy."""
    out = []
    for key in keys_through(stage):
        theirs = leaves(lookup(recorded, key, None), key)
        ours = leaves(lookup(cfg, key), key)
        for leaf in sorted((set(theirs) | set(ours)) - EXECUTION_KEYS):
            if leaf.startswith("data.toy.") and cfg["data"]["name"] != "toy":
                continue  # the embedded dataset's knobs make no other dataset
            a, b = theirs.get(leaf, "<absent>"), ours.get(leaf, "<absent>")
            if a != b:
                out.append(f"{leaf}: input made with {a!r}, params give {b!r}")
    return out


def check_input(recorded: dict, cfg: dict, stage: str, path: str | Path) -> None:
    """Refuse ``path`` (an output of ``stage``, made with the configuration ``recorded``) when any key
    ``stage`` depends on differs from ``cfg``; the error names every differing key.

    Raises WsssError.
    """
    diffs = differences(recorded, cfg, stage)
    if diffs:
        raise WsssError(f"{path} was made by `wsss {stage}` under other parameters ({'; '.join(diffs)}); "
                        f"re-run `wsss {stage}` with the current params, or run with the params it was made with")


def read_recorded(path: Path, missing: str | None = None) -> dict:
    """The configuration recorded beside a stage's outputs (``config.yaml``, ``prepared.json``); ``missing``:
    the error when the file is absent."""
    if not path.is_file():
        raise WsssError(missing or f"{path} is missing: the output beside it was not made by a complete `wsss` "
                        "stage run; re-run that stage")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise WsssError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise WsssError(f"{path} does not hold a configuration")
    return data


def check_dataset(data_dir: Path, cfg: dict) -> None:
    """Refuse a prepared dataset made under other ``prepare`` keys (``prepared.json``'s ``data``)."""
    marker = data_dir / "prepared.json"
    info = read_recorded(marker, f"dataset not prepared: {marker} is missing; run `wsss prepare` first")
    check_input({"data": info.get("data", {})}, cfg, "prepare", data_dir)


def check_stage_dir(out_dir: Path, cfg: dict, stage: str) -> None:
    """Refuse the output folder of ``stage`` (``infer`` or ``crf``) made under other keys of that stage."""
    check_input(read_recorded(out_dir / "config.yaml"), cfg, stage, out_dir)
