"""Checkpoints: atomic saves, clear errors on corrupt files or on a different model configuration."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from wsss import config as params
from wsss.errors import WsssError
from wsss.utils.atomic import atomic_path


def model_signature(cfg: dict) -> dict:
    """What must match for a checkpoint's weights to fit a model: the model section and the classes."""
    return {"dataset": cfg["data"]["name"], "num_classes": params.num_classes(cfg), "model": cfg["model"]}


def save(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read(path: str | Path) -> object:
    """Whatever ``torch.load`` finds in ``path`` (on the CPU); WsssError naming a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise WsssError(f"checkpoint {path} is unreadable or corrupt: {exc}") from None


def is_wsss(state: object) -> bool:
    return isinstance(state, dict) and "model" in state and "signature" in state


def load(path: str | Path) -> dict:
    """A wsss checkpoint (``model``, ``signature``, ...); WsssError for anything else."""
    state = read(path)
    if not is_wsss(state):
        raise WsssError(f"checkpoint {path} is not a wsss checkpoint (no 'model'/'signature' entries)")
    return state


def check_signature(state: dict, cfg: dict, path: str | Path) -> None:
    """Refuse a checkpoint made for another model configuration, naming the keys that differ."""
    ours, theirs = model_signature(cfg), state["signature"]
    if ours == theirs:
        return
    diffs = []
    for key in ("dataset", "num_classes"):
        if ours[key] != theirs.get(key):
            diffs.append(f"{key}: checkpoint {theirs.get(key)!r}, params {ours[key]!r}")
    mine, other = ours["model"], theirs.get("model", {})
    for key in sorted(set(mine) | set(other)):
        if mine.get(key) != other.get(key):
            diffs.append(f"model.{key}: checkpoint {other.get(key)!r}, params {mine.get(key)!r}")
    raise WsssError(f"checkpoint {path} was made for a different model configuration ({'; '.join(diffs)}); "
                    "re-run the stages that make it with the current params")


def made_by(state: dict) -> str:
    """The stage that wrote a final checkpoint (``pretrain``, ``train`` or ``supervise``)."""
    if "stage" in state:
        return state["stage"]
    if state.get("supervised"):
        return "supervise"
    cfg = state.get("config")
    return "pretrain" if cfg is not None and state.get("epoch") == cfg["train"]["cls_epochs"] else "train"


def check_made_by(state: dict, cfg: dict, path: str | Path, expected: str | None = None) -> None:
    """Refuse a checkpoint whose recorded configuration differs from ``cfg`` in a key its stage depends on.

    ``expected``: the stage that must have written it (None: whichever it records). Raises WsssError.
    """
    from wsss import provenance

    stage = made_by(state)
    if expected is not None and stage != expected:
        raise WsssError(f"checkpoint {path} was written by `wsss {stage}`, not by `wsss {expected}`")
    if "config" in state:
        provenance.check_input(state["config"], cfg, stage, path)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
