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


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WsssError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise WsssError(f"checkpoint {path} is unreadable or corrupt: {exc}") from None
    if not isinstance(state, dict) or "model" not in state or "signature" not in state:
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
