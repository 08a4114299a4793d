"""params.yaml: loading, ``-S key.path=value`` overrides, presets, and schema validation.

The resolved configuration a stage runs with is params.yaml's sections with
``presets.<data.name>`` merged in, then the ``-S`` overrides. A key lives either in a section or in
the presets, never both. The schema (``workflow/schemas/params.schema.yaml``) checks the resolved
configuration of every preset and injects no defaults.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from wsss.errors import WsssError

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"
SECTIONS = ("data", "model", "train", "infer", "crf", "eval", "pseudo", "retrain", "plugins")
NUM_CLASSES = {"voc": 21, "coco": 81}
MAX_CLASSES = 255  # mask values 0..254 name classes; 255 is ignore


class ParamsError(WsssError):
    """A params file or override that does not fit the schema."""


def _overrides_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_override(item: str) -> tuple[list[str], Any]:
    """``key.path=value`` -> (key parts, typed value), exactly as ``dvc exp run -S`` reads it.

    DVC parses ``-S`` with Hydra's override grammar (``dvc.utils.hydra.apply_overrides``), so this
    does too: ``1e-3`` is a float, ``yes`` / ``on`` / ``0x10`` are strings, ``True`` is a boolean,
    ``null`` is None, ``[1, 2]`` a list, a quoted value a string. Sweeps, ``+key`` and ``~key`` are
    refused: a stage run changes existing keys only.
    """
    from hydra.errors import HydraException

    if "=" not in item:
        raise ParamsError(f"override {item!r} is not of the form key.path=value")
    key = item.partition("=")[0].strip()
    if not key or any(not part for part in key.split(".")):
        raise ParamsError(f"override {item!r} has an empty key")
    try:
        override = _overrides_parser().parse_overrides([item])[0]
    except HydraException as exc:
        raise ParamsError(f"cannot parse override {item!r}: {exc}") from None
    if override.is_sweep_override():
        raise ParamsError(f"override {item!r}: a sweep is not a value (queue one experiment per value instead)")
    if override.is_add() or override.is_force_add() or override.is_delete():
        raise ParamsError(f"override {item!r}: only existing keys can be set (no '+' or '~' prefix)")
    return override.key_or_group.split("."), override.value()


def parse_value(text: str) -> Any:
    """A ``-S`` value typed as ``dvc exp run -S`` types it (see ``parse_override``)."""
    return parse_override(f"value={text}")[1]


def parse_yaml(text: str, path: str | Path) -> Any:
    """YAML as DVC reads params files: YAML 1.2 (ruamel.yaml's safe loader, ``dvc.utils.serialize``).

    So ``lr: 1e-3`` is a float and ``flag: yes`` a string, in params.yaml and in overlays alike.
    """
    from ruamel.yaml import YAMLError

    try:
        return copy.deepcopy(_parse_text(text))
    except YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None


@functools.lru_cache(maxsize=16)
def _parse_text(text: str) -> Any:
    """``parse_yaml``'s parse, kept per text: the benchmark's design check and Snakemake's jobs resolve the
    same params.yaml dozens of times in one process. Callers get a deep copy."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


def load_mapping(path: Path, what: str = "params file") -> dict:
    """A YAML file holding a mapping, or an error naming the file (``what`` says what it was meant to be)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{what} not found: {path}")
    data = parse_yaml(path.read_text(), path)
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def _has_path(tree: dict, keys: list[str]) -> bool:
    node = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _set_path(tree: dict, keys: list[str], value: Any) -> None:
    """Set ``tree[k1][k2]...`` to ``value``; a mapping merges into an existing mapping, key by key, as
    ``dvc exp run -S 'crf={iters: 5}'`` does (Hydra merges it into the section)."""
    node = tree
    for key in keys[:-1]:
        node = node[key]
    if isinstance(value, dict) and isinstance(node.get(keys[-1]), dict):
        merged = copy.deepcopy(node[keys[-1]])
        for sub, item in value.items():
            _set_path(merged, [sub], item)
        value = merged
    node[keys[-1]] = value


def _merge_existing(base: dict, overlay: dict, where: str, prefix: str = "") -> None:
    """Deep-merge ``overlay`` into ``base``; every key of the overlay must already exist."""
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ParamsError(f"{where}: unknown key '{dotted}' (not in the base params file)")
        if isinstance(value, dict) and isinstance(base[key], dict):
            _merge_existing(base[key], value, where, dotted + ".")
        else:
            base[key] = value


def _merge_preset(sections: dict, preset: dict, name: str) -> dict:
    resolved = copy.deepcopy(sections)
    for section, values in (preset or {}).items():
        if section not in resolved or not isinstance(values, dict):
            raise ParamsError(f"presets.{name}: '{section}' is not a section ({', '.join(SECTIONS)})")
        for key, value in values.items():
            if key in resolved[section]:
                raise ParamsError(
                    f"key '{section}.{key}' is set both in section '{section}' and in "
                    f"presets.{name}.{section}: keep it in one place"
                )
            resolved[section][key] = value
    return resolved


def _format_error(err: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema["properties"])  # every closed object of the schema lists its keys
        extra = sorted(set(err.instance) - set(allowed))
        key = f"{path}.{extra[0]}" if path != "<top level>" else extra[0]
        return f"unknown key '{key}' (allowed in '{path}': {', '.join(allowed)})"
    if err.validator == "enum":
        return f"key '{path}': {err.instance!r} is not allowed (allowed: {', '.join(map(str, err.validator_value))})"
    return f"key '{path}': {err.message}"


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    """The parameter schema, parsed once per process (resolving runs it for every Snakemake job)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def validate(resolved: dict, origin: str = "params") -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ParamsError(f"{origin}: " + "; ".join(_format_error(e) for e in errors))
    data = resolved["data"]
    if data["classes"] is not None and len(data["classes"]) > MAX_CLASSES:
        raise ParamsError(f"{origin}: key 'data.classes': {len(data['classes'])} names, but mask values stop at "
                          f"{MAX_CLASSES - 1} (255 is ignore): at most {MAX_CLASSES} classes, background included; "
                          f"the first name too many is {data['classes'][MAX_CLASSES]!r}")
    if data["toy"]["min_size"] > data["toy"]["max_size"]:
        raise ParamsError(f"{origin}: key 'data.toy.min_size' must not exceed 'data.toy.max_size'")
    train = resolved["train"]
    if train["cls_epochs"] > train["epochs"]:
        raise ParamsError(f"{origin}: key 'train.cls_epochs' ({train['cls_epochs']}) exceeds 'train.epochs' ({train['epochs']})")
    if train["select"] == "best" and not validation_epochs(train):
        raise ParamsError(f"{origin}: key 'train.select' is 'best', but 'train.val_every' ({train['val_every']}) validates "
                          f"none of the segmentation epochs {train['cls_epochs']}..{train['epochs'] - 1}; set "
                          "train.val_every or train.select=last")


def validation_epochs(train: dict) -> list[int]:
    """The epochs ``e`` before whose training the validation loss is computed: the segmentation epochs
    ``cls_epochs <= e < epochs`` with ``e % val_every == 0`` (none when ``val_every`` is 0).

    The public SSSS / WS-FCN loop validates at the start of every even epoch and keeps a checkpoint
    only from the segmentation epochs on; the weights after the last epoch are never validated.
    """
    every = train["val_every"]
    return [e for e in range(train["cls_epochs"], train["epochs"]) if every and e % every == 0]


def resolve(raw: dict, overrides: Iterable[str] = (), origin: str = "params") -> dict:
    """Resolve raw params (sections + presets) and overrides into the configuration a stage runs with."""
    raw = copy.deepcopy(raw)
    late: list[tuple[list[str], Any, str]] = []
    for item in overrides:
        keys, value = parse_override(item)
        if _has_path(raw, keys):
            _set_path(raw, keys, value)
        else:
            late.append((keys, value, item))
    unknown = sorted(set(raw) - set(SECTIONS) - {"presets"})
    if unknown:
        raise ParamsError(f"{origin}: unknown top-level key '{unknown[0]}' (allowed: {', '.join(SECTIONS)}, presets)")
    missing = [s for s in SECTIONS if not isinstance(raw.get(s), dict)]
    if missing:
        raise ParamsError(f"{origin}: missing section '{missing[0]}'")
    presets = raw.get("presets") or {}
    sections = {s: raw[s] for s in SECTIONS}
    name = sections["data"].get("name")
    if not isinstance(name, str) or name not in presets:
        raise ParamsError(f"{origin}: key 'data.name': {name!r} has no preset (presets: {', '.join(presets)})")
    # Every preset must resolve to a valid configuration, not only the selected one.
    for other in presets:
        if other != name:
            candidate = _merge_preset(sections, presets[other], other)
            candidate["data"]["name"] = other
            validate(candidate, f"{origin} (presets.{other})")
    resolved = _merge_preset(sections, presets[name], name)
    for keys, value, item in late:
        if not _has_path(resolved, keys):
            raise ParamsError(f"override {item!r}: unknown key '{'.'.join(keys)}'")
        _set_path(resolved, keys, value)
    validate(resolved, origin)
    if resolved["data"]["name"] == "custom":
        check_custom(resolved["data"], origin)
    return resolved


def default_params_files() -> list[str]:
    """params.yaml, or the files named by WSSS_PARAMS (os.pathsep-separated; Snakemake sets it for overlays)."""
    listed = os.environ.get("WSSS_PARAMS", "")
    return [p for p in listed.split(os.pathsep) if p] or ["params.yaml"]


def load_raw(paths: Iterable[str | Path]) -> dict:
    """Load one or more params files; later files overlay earlier ones (existing keys only)."""
    paths = [Path(p) for p in paths] or [Path("params.yaml")]
    raw = load_mapping(paths[0])
    for overlay in paths[1:]:
        _merge_existing(raw, load_mapping(overlay), str(overlay))
    return raw


def load(paths: Iterable[str | Path] = ("params.yaml",), overrides: Iterable[str] = ()) -> dict:
    paths = [Path(p) for p in paths] or [Path("params.yaml")]
    return resolve(load_raw(paths), overrides, origin=", ".join(map(str, paths)))


def num_classes(cfg: dict) -> int:
    """Classes including background, for the configured dataset (``custom``: the names in ``data.classes``)."""
    name = cfg["data"]["name"]
    if name == "toy":
        return cfg["data"]["toy"]["num_classes"] + 1
    if name == "custom":
        check_custom(cfg["data"])
        return len(cfg["data"]["classes"])
    return NUM_CLASSES[name]


def check_custom(data: dict, origin: str = "params") -> None:
    """``data.name: custom`` needs ``data.classes``: the names, background first (ParamsError naming the key)."""
    if not data.get("classes"):
        raise ParamsError(f"{origin}: key 'data.classes': data.name 'custom' needs the class names, background first "
                          "(the name at index k is mask value k), e.g. [background, cat, dog]")


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (used to tie checkpoints to configurations)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def dataset_dir(cfg: dict) -> Path:
    return Path(cfg["data"]["root"]) / cfg["data"]["name"]
