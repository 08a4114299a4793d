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


# ------------------------------------------------------------- exact error messages and merge rules

import copy  # noqa: E402
import re  # noqa: E402


def write_params(tmp_path: Path, edit, name: str = "params.yaml") -> Path:
    """params.yaml with ``edit(tree)`` applied, written under tmp_path."""
    tree = yaml.safe_load(PARAMS.read_text())
    edit(tree)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


@pytest.mark.parametrize("text,dotted", [
    ("model:\n  fcb: false\n", "model.fcb"),
    ("extra: 1\n", "extra"),
    ("data:\n  toy:\n    seeed: 1\n", "data.toy.seeed"),
])
def test_an_overlay_unknown_key_is_named_with_its_file_and_dotted_path(tmp_path, text, dotted):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(text)
    with pytest.raises(ParamsError, match=exactly(f"{overlay}: unknown key '{dotted}' (not in the base params file)")):
        config.load_raw([PARAMS, overlay])


def test_an_overlay_value_replaces_whatever_it_does_not_merge_into(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  toy: null\nmodel:\n  weights: {path: w.pth}\n  fca: false\n")
    raw = config.load_raw([PARAMS, overlay])
    base = yaml.safe_load(PARAMS.read_text())
    assert raw["data"]["toy"] is None  # a mapping replaced by a scalar
    assert raw["model"]["weights"] == {"path": "w.pth"}  # a scalar replaced by a mapping
    assert raw["model"]["fca"] is False
    base["data"]["toy"], base["model"]["weights"], base["model"]["fca"] = None, {"path": "w.pth"}, False
    assert raw == base
    # and the schema then names the key that is no longer a mapping
    with pytest.raises(ParamsError, match=exactly(f"{PARAMS}, {overlay} (presets.voc): key 'data.toy': None is not of type 'object'; "
                                                  f"key 'model.weights': {{'path': 'w.pth'}} is not of type 'string', 'null'")):
        config.load([PARAMS, overlay])


def test_unknown_keys_in_a_section_are_named_with_the_allowed_keys(tmp_path):
    def edit(tree):
        tree["eval"]["zz"] = 1
        tree["eval"]["aa"] = 2
    path = write_params(tmp_path, edit)
    # eval is shared by every preset: the first other preset (voc) reports it
    with pytest.raises(ParamsError, match=exactly(
            f"{path} (presets.voc): unknown key 'eval.aa' (allowed in 'eval': absent_class, ignore_index)")):
        config.load([path])


def test_an_unknown_key_in_a_mapping_override_is_named_with_the_allowed_keys():
    with pytest.raises(ParamsError, match=exactly(
            f"{PARAMS} (presets.voc): unknown key 'eval.extra' (allowed in 'eval': absent_class, ignore_index)")):
        config.load([PARAMS], ["eval={extra: 1}"])


def test_an_unknown_key_in_the_selected_preset_is_named(tmp_path):
    def edit(tree):
        tree["presets"]["toy"]["infer"]["pad"] = 3
    path = write_params(tmp_path, edit)
    with pytest.raises(ParamsError, match=exactly(
            f"{path}: unknown key 'infer.pad' (allowed in 'infer': acr_affinity, acr_blocks, amp, background, bg_const, "
            "bg_power, channels_last, chunk, device, flip, fp_cut, localisation, pad_size, presence, scales)")):
        config.load([path])


def test_validate_names_unknown_top_level_keys():
    cfg = config.load([PARAMS])
    cfg["zz"] = {}
    cfg["aa"] = 1
    with pytest.raises(ParamsError, match=exactly(
            "params: unknown key 'aa' (allowed in '<top level>': crf, data, eval, infer, model, plugins, pseudo, retrain, train)")):
        config.validate(cfg)


def test_validate_names_missing_sections_at_the_top_level():
    cfg = config.load([PARAMS])
    del cfg["crf"]
    with pytest.raises(ParamsError, match=exactly("mine: key '<top level>': 'crf' is a required property")):
        config.validate(cfg, "mine")


def test_enum_errors_list_the_allowed_values():
    with pytest.raises(ParamsError, match=exactly(
            f"{PARAMS}: key 'model.backbone': 'vgg' is not allowed (allowed: wr38, resnet50, resnet101, small, vit_toy, vit_b16, vit_hybrid)")):
        config.load([PARAMS], ["model.backbone=vgg"])
    with pytest.raises(ParamsError, match=exactly(
            f"{PARAMS} (presets.voc): key 'eval.absent_class': 'none' is not allowed (allowed: zero, nan, one)")):
        config.load([PARAMS], ["eval.absent_class=none"])


def test_a_missing_required_key_is_named(tmp_path):
    def edit(tree):
        del tree["presets"]["toy"]["model"]["focal_lambda"]
    path = write_params(tmp_path, edit)
    with pytest.raises(ParamsError, match=exactly(f"{path}: key 'model': 'focal_lambda' is a required property")):
        config.load([path])


def test_other_schema_errors_carry_the_key_and_jsonschemas_message():
    with pytest.raises(ParamsError, match=exactly(f"{PARAMS}: key 'train.lr': -1 is less than or equal to the minimum of 0")):
        config.load([PARAMS], ["train.lr=-1"])
    with pytest.raises(ParamsError, match=exactly(f"{PARAMS}: key 'train.lr_mults.2': -1 is less than the minimum of 0")):
        config.load([PARAMS], ["train.lr_mults=[1, 2, -1, 4]"])


def test_several_schema_errors_are_all_reported_sorted_by_key():
    with pytest.raises(ParamsError, match=exactly(
            f"{PARAMS} (presets.voc): key 'crf.iters': -1 is less than the minimum of 0; "
            "key 'eval.ignore_index': 256 is greater than the maximum of 255; "
            "key 'train.momentum': 2 is greater than the maximum of 1")):
        config.load([PARAMS], ["eval.ignore_index=256", "train.momentum=2", "crf.iters=-1"])


def test_bounds_across_keys_are_inclusive_and_named():
    # equal bounds are fine
    assert config.load([PARAMS], ["data.toy.min_size=128"])["data"]["toy"]["min_size"] == 128
    assert config.load([PARAMS], ["train.cls_epochs=12"])["train"]["cls_epochs"] == 12
    with pytest.raises(ParamsError, match=exactly(
            f"{PARAMS} (presets.voc): key 'data.toy.min_size' must not exceed 'data.toy.max_size'")):
        config.load([PARAMS], ["data.toy.min_size=129"])
    with pytest.raises(ParamsError, match=exactly(f"{PARAMS}: key 'train.cls_epochs' (13) exceeds 'train.epochs' (12)")):
        config.load([PARAMS], ["train.cls_epochs=13"])
    with pytest.raises(ParamsError, match=exactly(f"{PARAMS}: key 'train.cls_epochs' (7) exceeds 'train.epochs' (5)")):
        config.load([PARAMS], ["train.epochs=5", "train.cls_epochs=7"])


@pytest.mark.parametrize("item,message", [
    ("crf.iters", "override 'crf.iters' is not of the form key.path=value"),
    ("~model.fca", "override '~model.fca' is not of the form key.path=value"),
    ("=1", "override '=1' has an empty key"),
    ("=a=1", "override '=a=1' has an empty key"),
    (" =1", "override ' =1' has an empty key"),
    (".fca=1", "override '.fca=1' has an empty key"),
    ("model.=1", "override 'model.=1' has an empty key"),
    ("model..fca=1", "override 'model..fca=1' has an empty key"),
    ("infer.scales=range(1,3)", "override 'infer.scales=range(1,3)': a sweep is not a value (queue one experiment per value instead)"),
    ("model.fca=true,false", "override 'model.fca=true,false': a sweep is not a value (queue one experiment per value instead)"),
    ("+model.extra=1", "override '+model.extra=1': only existing keys can be set (no '+' or '~' prefix)"),
    ("+model.fca=true", "override '+model.fca=true': only existing keys can be set (no '+' or '~' prefix)"),
    ("++model.fca=true", "override '++model.fca=true': only existing keys can be set (no '+' or '~' prefix)"),
    ("~model.fca=true", "override '~model.fca=true': only existing keys can be set (no '+' or '~' prefix)"),
    ("~model.fca=", "override '~model.fca=': only existing keys can be set (no '+' or '~' prefix)"),
])
def test_malformed_overrides_are_refused_with_the_override_named(item, message):
    with pytest.raises(ParamsError, match=exactly(message)):
        config.parse_override(item)
    with pytest.raises(ParamsError, match=exactly(message)):
        config.load([PARAMS], [item])


def test_an_unparsable_override_is_named():
    with pytest.raises(ParamsError, match="^" + re.escape("cannot parse override 'model.fca=[1,': ") + ".+"):
        config.parse_override("model.fca=[1,")


def test_parse_override_splits_the_key_path_and_types_the_value():
    assert config.parse_override("data.toy.seed=3") == (["data", "toy", "seed"], 3)
    assert config.parse_override("crf={iters: 5}") == (["crf"], {"iters": 5})
    keys, value = config.parse_override("model.weights='a=b'")
    assert keys == ["model", "weights"] and value == "a=b"
    assert config.parse_value("1e-3") == 0.001 and type(config.parse_value("1e-3")) is float
    assert config.parse_value("[1, 2]") == [1, 2]


@pytest.mark.parametrize("item,message", [
    ("model.fcaa=true", "override 'model.fcaa=true': unknown key 'model.fcaa'"),
    ("model.fca.x=1", "override 'model.fca.x=1': unknown key 'model.fca.x'"),
    ("model.context.x=1", "override 'model.context.x=1': unknown key 'model.context.x'"),
    ("nope.x=1", "override 'nope.x=1': unknown key 'nope.x'"),
    ("train.lr.x=1", "override 'train.lr.x=1': unknown key 'train.lr.x'"),
])
def test_an_override_of_an_unknown_key_is_named(item, message):
    with pytest.raises(ParamsError, match=exactly(message)):
        config.load([PARAMS], [item])


def test_overrides_set_nested_and_preset_owned_keys():
    cfg = config.load([PARAMS], ["data.toy.seed=3", "train.lr_mults=[1, 1, 1, 1]", "data.toy={n_val: 7, seed: 4}"])
    assert cfg["data"]["toy"]["seed"] == 4 and cfg["data"]["toy"]["n_val"] == 7
    assert cfg["data"]["toy"]["n_train"] == 2000  # merged, not replaced
    assert set(cfg["data"]["toy"]) == set(yaml.safe_load(PARAMS.read_text())["data"]["toy"])
    assert cfg["train"]["lr_mults"] == [1, 1, 1, 1]
    cfg = config.load([PARAMS], ["data={toy: {seed: 5}, root: elsewhere}"])
    assert cfg["data"]["toy"]["seed"] == 5 and cfg["data"]["toy"]["max_size"] == 128 and cfg["data"]["root"] == "elsewhere"
    assert cfg["data"]["name"] == "toy"


def test_a_mapping_override_replaces_a_non_mapping_and_a_scalar_replaces_a_mapping():
    with pytest.raises(ParamsError, match=exactly(f"{PARAMS} (presets.voc): key 'model.weights': {{'a': 1}} is not of type 'string', 'null'")):
        config.load([PARAMS], ["model.weights={a: 1}"])
    with pytest.raises(ParamsError, match=exactly(f"{PARAMS} (presets.voc): key 'data.toy': None is not of type 'object'")):
        config.load([PARAMS], ["data.toy=null"])


def test_resolve_leaves_its_input_alone():
    raw = config.load_raw([PARAMS])
    before = yaml.safe_load(PARAMS.read_text())
    assert raw == before
    cfg = config.resolve(raw, ["model.fca=false", "data.toy={seed: 9}", "train.lr=0.5"])
    assert cfg["model"]["fca"] is False and cfg["data"]["toy"]["seed"] == 9 and cfg["train"]["lr"] == 0.5
    assert raw == before


def test_resolve_errors_name_the_origin_and_the_key():
    raw = config.load_raw([PARAMS])
    with pytest.raises(ParamsError, match=exactly(
            "params: unknown top-level key 'aaa' (allowed: data, model, train, infer, crf, eval, pseudo, retrain, plugins, presets)")):
        config.resolve({**raw, "zzz": 1, "aaa": 2})
    without = {k: v for k, v in raw.items() if k != "infer"}
    with pytest.raises(ParamsError, match=exactly("mine: missing section 'infer'")):
        config.resolve(without, origin="mine")
    with pytest.raises(ParamsError, match=exactly("mine: missing section 'crf'")):
        config.resolve(raw, ["crf=5"], origin="mine")
    with pytest.raises(ParamsError, match=exactly(
            f"{PARAMS}: key 'data.name': 'cityscapes' has no preset (presets: toy, voc, coco, custom)")):
        config.load([PARAMS], ["data.name=cityscapes"])
    with pytest.raises(ParamsError, match=exactly("params: key 'data.name': 'toy' has no preset (presets: )")):
        config.resolve({k: v for k, v in raw.items() if k != "presets"})
    with pytest.raises(ParamsError, match=exactly(f"{PARAMS}: key 'data.name': [1] has no preset (presets: toy, voc, coco, custom)")):
        config.load([PARAMS], ["data.name=[1]"])  # not a name at all


def test_every_preset_is_validated_under_its_own_name(tmp_path):
    def edit(tree):
        tree["presets"]["foo"] = copy.deepcopy(tree["presets"]["toy"])
    path = write_params(tmp_path, edit)
    with pytest.raises(ParamsError, match=exactly(
            f"{path} (presets.foo): key 'data.name': 'foo' is not allowed (allowed: toy, voc, coco, custom)")):
        config.load([path])


@pytest.mark.parametrize("preset,section,value,message", [
    ("voc", "model", {"backbone": "wr38", "psi": 0.5},
     "key 'model.psi' is set both in section 'model' and in presets.voc.model: keep it in one place"),
    ("toy", "crf", {"iters": 3}, "key 'crf.iters' is set both in section 'crf' and in presets.toy.crf: keep it in one place"),
    ("coco", "foo", {"a": 1}, "presets.coco: 'foo' is not a section (data, model, train, infer, crf, eval, pseudo, retrain, plugins)"),
    ("toy", "foo", {"a": 1}, "presets.toy: 'foo' is not a section (data, model, train, infer, crf, eval, pseudo, retrain, plugins)"),
    ("toy", "eval", 5, "presets.toy: 'eval' is not a section (data, model, train, infer, crf, eval, pseudo, retrain, plugins)"),
])
def test_a_preset_must_hold_mappings_of_new_keys_per_section(tmp_path, preset, section, value, message):
    def edit(tree):
        tree["presets"][preset][section] = value
    path = write_params(tmp_path, edit)
    with pytest.raises(ParamsError, match=exactly(message)):
        config.load([path])


def test_load_mapping_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match=exactly(f"params file not found: {missing}")):
        config.load_mapping(missing)
    with pytest.raises(ParamsError, match=exactly(f"overlay not found: {missing}")):
        config.load_mapping(str(missing), "overlay")
    with pytest.raises(ParamsError, match=exactly(f"params file not found: {tmp_path}")):
        config.load_mapping(tmp_path)  # a directory is not a params file
    for text in ("- 1\n- 2\n", "", "3\n"):
        path = tmp_path / "list.yaml"
        path.write_text(text)
        with pytest.raises(ParamsError, match=exactly(f"{path}: expected a mapping at the top level")):
            config.load_mapping(str(path))
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ParamsError, match="^" + re.escape(f"{path}: not valid YAML: ") + ".+"):
        config.load_mapping(path)
    path.write_text("a: 1\nb: {c: 2}\n")
    data = config.load_mapping(str(path))
    assert data == {"a": 1, "b": {"c": 2}} and type(data) is dict and type(data["b"]) is dict


def test_parse_yaml_reads_plain_python_types():
    data = config.parse_yaml("a: [1, 2.5]\nb: yes\nc: 1e-3\n", "x.yaml")
    assert data == {"a": [1, 2.5], "b": "yes", "c": 0.001}
    assert type(data) is dict and type(data["a"]) is list and type(data["a"][1]) is float and type(data["c"]) is float
    with pytest.raises(ParamsError, match="^" + re.escape("x.yaml: not valid YAML: ")):
        config.parse_yaml("a: b: c\n", "x.yaml")


def test_no_paths_means_params_yaml_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=exactly("params file not found: params.yaml")):
        config.load_raw([])
    with pytest.raises(ParamsError, match=exactly("params file not found: params.yaml")):
        config.load([])
    (tmp_path / "params.yaml").write_text(PARAMS.read_text().replace("  iters: 10\n", "  iters: 7\n"))
    assert config.load_raw([])["crf"]["iters"] == 7
    assert config.load([])["crf"]["iters"] == 7
    assert config.load()["crf"]["iters"] == 7
    with pytest.raises(ParamsError, match=exactly("params.yaml: key 'train.lr': 0 is less than or equal to the minimum of 0")):
        config.load([], ["train.lr=0"])


def test_overlays_apply_in_order(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("crf:\n  iters: 3\n  bi_sxy: 40\n")
    second.write_text("crf:\n  iters: 4\n")
    raw = config.load_raw([str(PARAMS), str(first), str(second)])
    assert raw["crf"]["iters"] == 4 and raw["crf"]["bi_sxy"] == 40
    assert config.load_raw([PARAMS, first])["crf"]["iters"] == 3


def test_wsss_params_skips_empty_entries(monkeypatch):
    import os

    monkeypatch.setenv("WSSS_PARAMS", f"a.yaml{os.pathsep}{os.pathsep}b.yaml{os.pathsep}")
    assert config.default_params_files() == ["a.yaml", "b.yaml"]
    monkeypatch.setenv("WSSS_PARAMS", "")
    assert config.default_params_files() == ["params.yaml"]
    monkeypatch.setenv("WSSS_PARAMS", "my params.yaml")
    assert config.default_params_files() == ["my params.yaml"]
    monkeypatch.delenv("WSSS_PARAMS")
    assert config.default_params_files() == ["params.yaml"]


def test_num_classes_per_dataset():
    cfg = config.load([PARAMS])
    assert config.num_classes(cfg) == 11
    assert config.num_classes(config.load([PARAMS], ["data.toy.num_classes=4"])) == 5
    assert config.num_classes(config.load([PARAMS], ["data.name=voc"])) == 21
    assert config.num_classes(config.load([PARAMS], ["data.name=coco"])) == 81


def test_fingerprint_is_a_short_sha256_of_canonical_json():
    import hashlib

    expected = hashlib.sha256(b'{"a": [1, 2], "b": {"c": "x", "d": null}}').hexdigest()[:12]
    assert config.fingerprint({"b": {"d": None, "c": "x"}, "a": [1, 2]}) == expected
    assert config.fingerprint({"a": [1, 2], "b": {"c": "x", "d": None}}) == expected
    assert len(expected) == 12
    assert config.fingerprint({"p": Path("runs/x")}) == hashlib.sha256(b'{"p": "runs/x"}').hexdigest()[:12]
    assert config.fingerprint({"a": 1}) != config.fingerprint({"a": 2})


def test_dataset_dir_is_root_slash_name():
    assert config.dataset_dir(config.load([PARAMS])) == Path("data") / "toy"
    assert config.dataset_dir(config.load([PARAMS], ["data.name=voc", "data.root=/d"])) == Path("/d/voc")
