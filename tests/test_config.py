"""params.yaml: schema validation, typed -S overrides, presets, and the CLI's error exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from wsss import config
from wsss.config import ParamsError

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def test_committed_params_resolve_to_the_toy_preset():
    cfg = config.load([PARAMS])
    assert cfg["data"]["name"] == "toy"
    assert cfg["model"]["backbone"] == "small"
    assert "presets" not in cfg
    assert config.num_classes(cfg) == cfg["data"]["toy"]["num_classes"] + 1


def test_switching_dataset_selects_its_preset():
    cfg = config.load([PARAMS], ["data.name=voc"])
    assert cfg["model"]["backbone"] == "wr38"
    assert cfg["train"]["crop_size"] == 321 and cfg["train"]["epochs"] == 31 and cfg["train"]["cls_epochs"] == 7
    assert cfg["train"]["lr_mults"] == [1, 2, 20, 40]
    assert config.num_classes(cfg) == 21


@pytest.mark.parametrize("item,expected", [
    ("model.fca=false", False), ("model.psi=0.5", 0.5), ("train.pamr_iters=5", 5),
    ("infer.scales=[1.0, 0.5]", [1.0, 0.5]), ("model.weights=/x/w.pth", "/x/w.pth"), ("model.weights=null", None),
])
def test_overrides_are_typed(item, expected):
    key, _, _ = item.partition("=")
    section, name = key.split(".")
    assert config.load([PARAMS], [item])[section][name] == expected


def test_override_of_a_preset_owned_key_applies_after_the_preset():
    cfg = config.load([PARAMS], ["model.backbone=resnet50", "train.epochs=3", "train.cls_epochs=1"])
    assert cfg["model"]["backbone"] == "resnet50" and cfg["train"]["epochs"] == 3


@pytest.mark.parametrize("item,words", [
    ("model.fcaa=true", ["model.fcaa", "unknown"]),
    ("model.fca=no", ["model.fca", "boolean"]),
    ("model.fca=yes", ["model.fca", "boolean"]),
    ("infer.scales=range(1,3)", ["infer.scales", "sweep"]),
    ("+model.extra=1", ["+model.extra", "existing keys"]),
    ("model.backbone=vgg", ["model.backbone", "wr38", "resnet50", "small"]),
    ("infer.presence=oracle", ["infer.presence", "classifier", "gt"]),
    ("train.lr=-1", ["train.lr"]),
    ("data.name=cityscapes", ["data.name"]),
    ("train.cls_epochs=99", ["train.cls_epochs", "train.epochs"]),
    ("crf.iters", ["crf.iters", "key.path=value"]),
])
def test_bad_values_are_refused_naming_the_key(item, words):
    with pytest.raises(ParamsError) as err:
        config.load([PARAMS], [item])
    for word in words:
        assert word in str(err.value)


def test_a_key_in_a_section_and_a_preset_is_refused(tmp_path):
    tree = yaml.safe_load(PARAMS.read_text())
    tree["model"]["backbone"] = "small"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ParamsError, match="model.backbone"):
        config.load([path])


def test_every_preset_is_validated(tmp_path):
    tree = yaml.safe_load(PARAMS.read_text())
    tree["presets"]["voc"]["train"]["crop_size"] = "big"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ParamsError, match=r"presets.voc.*train.crop_size"):
        config.load([path])


def test_overlay_files_merge_and_refuse_unknown_keys(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  fca: false\ncrf:\n  bi_sxy: 30\n")
    cfg = config.load([PARAMS, overlay])
    assert cfg["model"]["fca"] is False and cfg["crf"]["bi_sxy"] == 30
    overlay.write_text("model:\n  fcb: false\n")
    with pytest.raises(ParamsError, match="model.fcb"):
        config.load([PARAMS, overlay])


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml"):
        config.load([tmp_path / "nope.yaml"])


def test_cli_exits_nonzero_with_the_key_in_the_message():
    proc = subprocess.run([sys.executable, "-m", "wsss.cli", "evaluate", "--params", str(PARAMS), "-S", "eval.absent_class=none"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "eval.absent_class" in proc.stderr and "zero" in proc.stderr


def test_cli_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "wsss.cli", "--help"], capture_output=True, text=True, cwd=REPO).stdout
    for stage in ("prepare", "pretrain", "train", "infer", "crf", "evaluate", "model-info"):
        assert stage in out


def test_wsss_params_names_the_files_the_cli_reads(tmp_path, monkeypatch):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("crf:\n  bi_sxy: 30\n")
    monkeypatch.setenv("WSSS_PARAMS", f"{PARAMS}:{overlay}")
    assert config.default_params_files() == [str(PARAMS), str(overlay)]
    assert config.load(config.default_params_files())["crf"]["bi_sxy"] == 30
    monkeypatch.delenv("WSSS_PARAMS")
    assert config.default_params_files() == ["params.yaml"]


# ------------------------------------------------------------- typed exactly as DVC types them

SPELLINGS = ["1e-3", "1E-3", "1.0e-3", ".5", "1.", "5", "+1", "-0", "1_000", "0x10", "0o17", "017", "yes", "no",
             "on", "off", "y", "true", "True", "TRUE", "false", "null", "NULL", "nan", "inf", "-inf", "1e3",
             "[1, 2]", "[0.5, 1e-3]", "'1e-3'", '"yes"', "a b", "2026-01-01", "0.1.2", "~"]


def dvc_set(tmp_path: Path, spelling: str):
    """What `dvc exp run -S value=<spelling>` writes into a params file, read back as DVC reads it."""
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text("value: 0\n")
    try:
        apply_overrides(path, [f"value={spelling}"])
    except Exception:
        return "refused"
    return load_yaml(path)["value"]


def wsss_set(spelling: str):
    try:
        return config.parse_value(spelling)
    except ParamsError:
        return "refused"


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # nan
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_override_values_are_typed_as_dvc_exp_run_types_them(tmp_path, spelling):
    theirs, ours = dvc_set(tmp_path, spelling), wsss_set(spelling)
    assert same(ours, theirs), (spelling, ours, theirs)


@pytest.mark.parametrize("spelling", [s for s in SPELLINGS if s != "~"] + ["~", "1e-3  # a comment", "'a: b'"])
def test_params_file_scalars_are_read_as_dvc_reads_them(tmp_path, spelling):
    from dvc.utils.serialize import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text(f"value: {spelling}\n")
    theirs = load_yaml(path)["value"]
    ours = config.load_mapping(path)["value"]
    assert same(ours, theirs), (spelling, ours, theirs)


def test_a_float_without_a_dot_is_a_float_in_overrides_and_in_params_yaml(tmp_path):
    assert config.load([PARAMS], ["train.lr=1e-3"])["train"]["lr"] == 0.001
    text = PARAMS.read_text().replace("      lr: 0.05\n", "      lr: 5e-2\n")
    assert "lr: 5e-2" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert config.load([path])["train"]["lr"] == 0.05
    proc = subprocess.run([sys.executable, "-m", "wsss.cli", "model-info", "--params", str(PARAMS), "-S", "train.lr=1e-3"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_a_mapping_override_merges_into_its_section_as_in_dvc(tmp_path):
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text())
    apply_overrides(path, ["crf={iters: 5, bi_srgb: 3}"])
    theirs = load_yaml(path)["crf"]
    ours = config.load([PARAMS], ["crf={iters: 5, bi_srgb: 3}"])["crf"]
    assert ours == theirs and ours["iters"] == 5 and ours["bi_sxy"] == 30
