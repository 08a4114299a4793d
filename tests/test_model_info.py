"""``wsss model-info``: JSON with the parameter counts and output shapes, without weights or a GPU."""

from __future__ import annotations

import json

import pytest

from wsss import cli, config

PARAMS = str(config.REPO_ROOT / "params.yaml")


def model_info(capsys, *args: str) -> dict:
    code = cli.main(["model-info", "--params", PARAMS, *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_voc_prints_ws_fcn_numbers(capsys):
    info = model_info(capsys, "-S", "data.name=voc")
    assert info["params_trainable_m"] == pytest.approx(147.34, abs=0.01)
    assert info["params_total_m"] == pytest.approx(147.34, rel=0.01)
    assert (info["backbone"], info["context"], info["fusion"]) == ("wr38", "fca", "sf2")
    assert info["num_classes"] == 21
    assert info["input"] == [1, 3, 321, 321]
    assert info["shapes"] == {"deep": [4096, 41, 41], "shallow": [256, 81, 81],
                              "logits": [21, 81, 81], "cls": [20]}


def test_overrides_change_the_counts(capsys):
    info = model_info(capsys, "-S", "data.name=voc", "-S", "model.fca=false", "-S", "model.sf2=false")
    assert info["params_trainable_m"] == pytest.approx(137.10, abs=0.01)
    assert (info["context"], info["fusion"]) == ("aspp", "gci")


def test_size_option_and_toy_model(capsys):
    info = model_info(capsys, "--size", "65", "97")
    assert info["backbone"] == "small" and info["num_classes"] == 11
    assert info["shapes"]["logits"] == [11, 17, 25]
    assert info["shapes"]["cls"] == [10]
    assert info["params_total_m"] == info["params_trainable_m"] > 0


def test_unknown_name_is_a_clear_error(capsys):
    code = cli.main(["model-info", "--params", PARAMS, "-S", "model.fusion=bilinear"])
    err = capsys.readouterr().err
    assert code == 2 and "model.fusion" in err and "sf2" in err
