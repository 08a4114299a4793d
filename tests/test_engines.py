"""Both engines over the same stages: same graph, same inputs and outputs, and the same re-run rules.

The end-to-end tests run the whole DAG on a reduced embedded dataset in a temporary copy of the
repository (a git repository, as `dvc exp run` needs), with Snakemake and with DVC.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SINGLE_STAGE = ["prepare", "pretrain", "train", "infer", "crf", "evaluate"]  # results/toy_val_miou.csv
TWO_STAGE = ["pseudo", "evaluate_pseudo", "retrain", "infer_stage2", "crf_stage2", "evaluate_stage2"]
STAGES = [*SINGLE_STAGE, "submit", *TWO_STAGE]
# the single-stage result, the two-stage one, the pseudo-masks' score, the test-server archive
TARGETS = ["results/toy_val_miou.csv", "results/toy_val_miou_stage2.csv", "results/toy_train_aug_pseudo_miou.csv",
           "results/toy_test_submission.tar.gz"]

# A reduced configuration: the same DAG and code paths, sized for seconds per stage.
REDUCED = {
    "data.toy.n_train": 48, "data.toy.n_val": 12, "data.toy.n_test": 5, "data.toy.min_size": 64, "data.toy.max_size": 72,
    "presets.toy.train.batch_size": 8, "presets.toy.train.crop_size": 64,
    "presets.toy.train.epochs": 2, "presets.toy.train.cls_epochs": 1,
    "infer.scales": [1.0, 0.5], "presets.toy.train.workers": 0, "crf.workers": 2,
    "presets.toy.retrain.iterations": 6, "presets.toy.retrain.batch_size": 8, "presets.toy.retrain.crop_size": 64,
}


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("GIT_AUTHOR_NAME", "wsss test")
    e.setdefault("GIT_AUTHOR_EMAIL", "test@wsss.invalid")
    e["GIT_COMMITTER_NAME"] = e["GIT_AUTHOR_NAME"]
    e["GIT_COMMITTER_EMAIL"] = e["GIT_AUTHOR_EMAIL"]
    e["PYTHONUNBUFFERED"] = "1"
    return e


def sh(args: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def set_param(params_file: Path, dotted: str, value) -> None:
    tree = yaml.safe_load(params_file.read_text())
    node = tree
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[key]
    assert keys[-1] in node, dotted
    node[keys[-1]] = value
    params_file.write_text(yaml.safe_dump(tree, sort_keys=False))


def make_copy(dest: Path, reduced: bool = True) -> Path:
    """A git repository holding the tracked files of this one (plus uncommitted edits)."""
    dest.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith(("results/", "data/")):  # a run's outputs in this checkout are not part of the copy
            continue
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if reduced:
        for key, value in REDUCED.items():
            set_param(dest / "params.yaml", key, value)
    sh(["git", "init", "-q"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "commit", "-qm", "snapshot"], dest)
    return dest


# ---------------------------------------------------------------- the graphs agree

def snakemake_graph(cwd: Path, *targets: str) -> dict[str, dict[str, set[str]]]:
    """Each rule's inputs and outputs, from a forced dry run (every job is listed with its files)."""
    out = sh([str(BIN / "snakemake"), "-n", "--forceall", "--cores", "1", *targets], cwd).stdout
    graph: dict[str, dict[str, set[str]]] = {}
    rule = None
    for line in out.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):", line)
        if head:
            rule = head.group(1)
            graph.setdefault(rule, {"inputs": set(), "outputs": set()})
            continue
        field = re.match(r"^\s+(input|output): (.*)$", line)
        if rule and field:
            key = "inputs" if field.group(1) == "input" else "outputs"
            graph[rule][key] |= {p.strip().rstrip("/") for p in field.group(2).split(",") if p.strip()}
    return graph


def dvc_graph(cwd: Path) -> dict[str, dict[str, set[str]]]:
    code = (
        "import json; from dvc.repo import Repo\n"
        "r = Repo('.')\n"
        "print(json.dumps({s.name: {'inputs': [str(d.def_path) for d in s.deps],"
        " 'outputs': [str(o.def_path) for o in s.outs]} for s in r.index.stages}))\n"
    )
    stages = json.loads(sh([sys.executable, "-c", code], cwd).stdout)
    graph = {}
    for name, node in stages.items():
        inputs = set()
        for dep in node["inputs"]:
            if dep == "params.yaml":  # DVC lists its params file as a dependency; Snakemake has `params:`
                continue
            path = cwd / dep
            if dep.startswith("wsss/") and path.is_dir():
                inputs |= {str(p.relative_to(cwd)) for p in path.rglob("*.py")}
            else:
                inputs.add(dep)
        graph[name] = {"inputs": inputs, "outputs": set(node["outputs"])}
    return graph


def test_snakemake_and_dvc_have_the_same_stages_inputs_and_outputs(tmp_path):
    repo = make_copy(tmp_path, reduced=False)
    snake = snakemake_graph(repo, *TARGETS)
    dvc = dvc_graph(repo)
    assert set(snake) == set(dvc) == set(STAGES)
    for stage in STAGES:
        assert snake[stage]["outputs"] == dvc[stage]["outputs"], stage
        assert snake[stage]["inputs"] == dvc[stage]["inputs"], stage


def test_dvc_params_match_the_declared_stage_params():
    declared = yaml.safe_load((REPO / "workflow" / "stages.yaml").read_text())
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        listed = {re.sub(r"^presets\.\$\{data\.name\}\.", "", p) for p in dvc[stage]["params"]}
        assert listed == set(declared[stage]["params"]), stage
        code = {d for d in dvc[stage]["deps"] if d.startswith("wsss/")}
        assert code == set(declared[stage]["code"]), stage


# ---------------------------------------------------------------- end to end

def jobs_planned(cwd: Path, *targets: str) -> set[str]:
    out = sh([str(BIN / "snakemake"), "-n", "--cores", "1", *targets], cwd).stdout
    if "Nothing to be done" in out:
        return set()
    return {m for m in re.findall(r"^rule (\w+):", out, flags=re.M)}


def dvc_stale(cwd: Path) -> set[str]:
    out = sh([str(BIN / "dvc"), "status", "--json"], cwd).stdout
    return set(json.loads(out or "{}"))


def reproduced(log: str) -> set[str]:
    """The stages a `dvc repro` (or an experiment's `dvc queue logs`) brought up to date: each one run, or
    restored from DVC's run-cache, which holds the outputs of an identical earlier run of the stage (a
    repeat of the same test on the same repository); not the stages that "didn't change"."""
    return set(re.findall(r"(?:Running stage|Stage) '(\w+)'(?::| is cached - skipping run)", log))


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory):
    repo = make_copy(tmp_path_factory.mktemp("snake"))
    sh([str(BIN / "snakemake"), "--cores", "2", *TARGETS], repo)
    return repo


@pytest.mark.slow
def test_snakemake_runs_the_whole_dag(snakemake_run):
    table = pd.read_csv(snakemake_run / "results" / "toy_val_miou.csv")
    assert {"class", "iou", "iou_crf"} <= set(table.columns)
    assert table["class"].iloc[-1] == "mean"
    metrics = json.loads((snakemake_run / "results" / "metrics" / "toy_val.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["miou_crf"] <= 1.0
    assert metrics["images"] == REDUCED["data.toy.n_val"]
    assert (snakemake_run / "results" / "toy" / "train_log.tsv").read_text().startswith("stage\t")
    pseudo = json.loads((snakemake_run / "results" / "metrics" / "toy_train_aug_pseudo.json").read_text())
    assert 0.0 <= pseudo["miou_crf"] <= 1.0 and pseudo["images"] == REDUCED["data.toy.n_train"]
    stage2 = json.loads((snakemake_run / "results" / "metrics" / "toy_val_stage2.json").read_text())
    assert 0.0 <= stage2["miou_crf"] <= 1.0 and stage2["images"] == REDUCED["data.toy.n_val"]
    import tarfile

    with tarfile.open(snakemake_run / "results" / "toy_test_submission.tar.gz") as tar:
        pngs = sorted(m.name for m in tar.getmembers() if m.isfile())
    tests = (snakemake_run / "data/toy/ImageSets/Segmentation/test.txt").read_text().split()
    assert pngs == [f"results/VOC2012/Segmentation/comp6_test_cls/{n}.png" for n in sorted(tests)]
    assert len(tests) == REDUCED["data.toy.n_test"]
    assert jobs_planned(snakemake_run, *TARGETS) == set()


@pytest.mark.slow
@pytest.mark.parametrize("key,value,expected", [
    # a crf.* change re-runs the pseudo-masks and everything after them, and nothing before
    ("crf.bi_sxy", 50, {"crf", "evaluate", "submit", *TWO_STAGE}),
    ("crf.workers", 1, set()),  # how many processes run the CRF changes no result
    ("infer.fp_cut", 0.2, {"infer", "crf", "evaluate", "submit"}),
    ("model.fca", False, set(STAGES) - {"prepare"}),
    ("presets.toy.train.pseudo_floor", 0.3, set(STAGES) - {"prepare", "pretrain"}),
    ("plugins.rtc.enabled", True, set(STAGES) - {"prepare"}),
    ("pseudo.score_split", "train_aug", {"evaluate_pseudo"}),
    ("presets.toy.retrain.lr", 0.02, {"retrain", "infer_stage2", "crf_stage2", "evaluate_stage2"}),
])
def test_snakemake_reruns_only_what_a_param_change_touches(snakemake_run, key, value, expected):
    params = snakemake_run / "params.yaml"
    before = params.read_text()
    try:
        set_param(params, key, value)
        assert jobs_planned(snakemake_run, *TARGETS) == expected
    finally:
        params.write_text(before)


@pytest.mark.slow
def test_snakemake_configfile_overlay_is_an_ablation(snakemake_run, tmp_path):
    overlay = tmp_path / "no_fca.yaml"
    overlay.write_text("model:\n  fca: false\n")
    out = sh([str(BIN / "snakemake"), "-n", "-p", "--cores", "1", "results/toy_val_miou.csv",
              "--configfile", str(overlay)], snakemake_run).stdout
    assert set(re.findall(r"^rule (\w+):", out, flags=re.M)) == set(SINGLE_STAGE) - {"prepare"}
    assert "wsss train -S data.name=toy" in out  # the same command: the overlay reaches the stages via WSSS_PARAMS


@pytest.mark.slow
def test_snakemake_scatters_infer_and_crf_into_shards_with_the_same_result(snakemake_run, tmp_path):
    """`--set-scatter infer=3 crf=2` on a copy of the finished run: shard jobs then a gather for each,
    the same mask bytes and mIoU table as the unsharded run, the shards removed, and nothing left to do."""
    repo = tmp_path / "sharded"
    shutil.copytree(snakemake_run, repo, symlinks=True)
    scatter = ["--set-scatter", "infer=3", "crf=2"]
    proc = sh([str(BIN / "snakemake"), "--cores", "2", "results/toy_val_miou.csv", *scatter], repo)
    jobs = re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, flags=re.M)
    assert sorted(jobs) == sorted(["infer_shard"] * 3 + ["infer"] + ["crf_shard"] * 2 + ["crf", "evaluate"])

    def masks(run: Path, stage: str) -> dict:
        return {p.name: p.read_bytes() for p in sorted((run / "results/toy/val" / stage / "masks").glob("*.png"))}

    for stage in ("infer", "crf"):
        assert masks(repo, stage) == masks(snakemake_run, stage) and len(masks(repo, stage)) == REDUCED["data.toy.n_val"]
        assert not (repo / "results/toy/val" / f"{stage}.shards").exists()
    assert (repo / "results/toy_val_miou.csv").read_bytes() == (snakemake_run / "results/toy_val_miou.csv").read_bytes()
    assert jobs_planned(repo, "results/toy_val_miou.csv", *scatter) == set()


def test_replace_workflow_config_keeps_params_yaml_as_the_base(tmp_path):
    repo = make_copy(tmp_path / "repo", reduced=False)
    small = repo / "small.yaml"
    small.write_text("model:\n  fca: false\n")  # a partial overlay
    proc = sh([str(BIN / "snakemake"), "-n", "--cores", "2", "results/toy_val_miou.csv", "--replace-workflow-config",
               "--configfile", "small.yaml"], repo)
    assert set(re.findall(r"^rule (\w+):", proc.stdout, flags=re.M)) == set(SINGLE_STAGE)
    assert "params.yaml stays the base, overlaid by" in proc.stderr and proc.stderr.strip().endswith("small.yaml")


def test_a_bad_overlay_is_a_clear_snakemake_error(tmp_path):
    repo = make_copy(tmp_path / "repo", reduced=False)
    (repo / "bad.yaml").write_text("model:\n  fcaa: false\n")
    proc = sh([str(BIN / "snakemake"), "-n", "--cores", "2", "results/toy_val_miou.csv", "--configfile", "bad.yaml"],
              repo, check=False)
    assert proc.returncode != 0
    assert "unknown key 'model.fcaa'" in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory):
    repo = make_copy(tmp_path_factory.mktemp("dvc"))
    sh([str(BIN / "dvc"), "repro"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline run"], repo)
    return repo


def reset_to_baseline(repo: Path) -> None:
    """The DVC fixture's workspace back to its committed baseline run: params.yaml and the lock file from
    git, every output from DVC's cache. The tests that change the workspace call it when they end, so
    that the next test, or a repeat of the same one, starts from the baseline whatever the order."""
    sh(["git", "checkout", "--", "."], repo)
    sh([str(BIN / "dvc"), "checkout", "--force"], repo)


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_dag_and_is_then_clean(dvc_run):
    metrics = json.loads((dvc_run / "results" / "metrics" / "toy_val.json").read_text())
    assert 0.0 <= metrics["miou_crf"] <= 1.0
    assert dvc_stale(dvc_run) == set()


@pytest.mark.slow
@pytest.mark.parametrize("key,value,changed,ran", [
    # what a change re-runs is the DVC graph's (test_snakemake_and_dvc_have_the_same_stages_inputs_and_outputs);
    # one change is run for real, the others are checked on `dvc status`
    ("crf.bi_sxy", 50, {"crf", "pseudo", "crf_stage2", "submit"}, None),
    ("crf.workers", 1, set(), None),
    ("infer.fp_cut", 0.2, {"infer", "submit"}, {"infer", "crf", "evaluate", "submit"}),  # not the pseudo-masks: their classes are the image labels
    # the whole re-run from pretrain is what test_dvc_exp_run_ablation_and_exp_show runs
    ("model.fca", False, {"pretrain", "train", "infer", "pseudo", "submit"}, None),
    ("plugins.fbr.enabled", True, {"pretrain", "train"}, None),
])
def test_dvc_reruns_only_what_a_param_change_touches(dvc_run, key, value, changed, ran):
    try:
        set_param(dvc_run / "params.yaml", key, value)
        assert dvc_stale(dvc_run) == changed  # the stages whose own params changed
        if ran is not None:
            out = sh([str(BIN / "dvc"), "repro"], dvc_run).stdout
            assert reproduced(out) == ran
    finally:
        reset_to_baseline(dvc_run)
    assert dvc_stale(dvc_run) == set()


def exp_rows(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`: ``{name: {"params": params.yaml's values, "miou_crf": toy_val's or None}}`` for
    every experiment by its name and for the workspace and the commit by ``workspace`` and ``commit``."""
    shown = json.loads(sh([str(BIN / "dvc"), "exp", "show", "--json"], repo).stdout)
    rows = {}
    for commit in shown:
        named = [("workspace" if commit.get("rev") == "workspace" else "commit", commit)]
        named += [(e.get("name") or e["rev"], e) for group in commit.get("experiments") or [] for e in group.get("revs", [])]
        for name, exp in named:
            data = exp.get("data") or {}
            metric = (data.get("metrics") or {}).get("results/metrics/toy_val.json", {}).get("data", {})
            rows[name] = {"params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                          "miou_crf": metric.get("miou_crf")}
    return rows


@pytest.mark.slow
def test_dvc_exp_run_ablation_and_exp_show(dvc_run):
    try:
        sh([str(BIN / "dvc"), "exp", "run", "evaluate", "-S", "model.fca=false"], dvc_run)  # the single stage's result
        values = {row["params"]["model"]["fca"] for row in exp_rows(dvc_run).values() if row["miou_crf"] is not None}
        assert values == {True, False}, values
    finally:
        reset_to_baseline(dvc_run)  # `dvc exp run` applies the experiment to the workspace


@pytest.mark.slow
def test_dvc_queue_runs_a_grid_with_the_baseline_as_an_experiment(dvc_run):
    """The README's recipe on a reduced grid: WS-FCN as it is committed and a plug-in queued with
    `dvc exp run --queue` (up to the single stage's result), run by `dvc queue start -j 1`, and compared by
    `dvc exp show`."""
    reset_to_baseline(dvc_run)
    queued = {"ws-fcn": [], "rtc": ["-S", "plugins.rtc.enabled=true", "-S", "plugins.rtc.view_size=48"]}
    try:
        for name, overrides in queued.items():
            sh([str(BIN / "dvc"), "exp", "run", "evaluate", "--queue", "-n", name, *overrides], dvc_run)
        sh([str(BIN / "dvc"), "queue", "start", "-j", "1"], dvc_run)
        deadline = time.monotonic() + 900
        status = ""
        while time.monotonic() < deadline:
            status = sh([str(BIN / "dvc"), "queue", "status"], dvc_run).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            time.sleep(5)
        else:
            sh([str(BIN / "dvc"), "queue", "stop", "--kill"], dvc_run, check=False)
            pytest.fail(f"the queue did not finish in 900 s:\n{status}")
        assert all(re.search(rf"\b{name}\b.*\bSuccess\b", status) for name in queued), status
        rows = exp_rows(dvc_run)
        assert set(queued) <= set(rows), sorted(rows)
        for name in queued:
            assert rows[name]["miou_crf"] is not None and 0.0 <= rows[name]["miou_crf"] <= 1.0, (name, rows[name])
            enabled = {p for p, section in rows[name]["params"]["plugins"].items() if section["enabled"]}
            assert enabled == ({name} if name != "ws-fcn" else set()), (name, enabled)
            ran = reproduced(sh([str(BIN / "dvc"), "queue", "logs", name], dvc_run).stdout)
            # the committed baseline's stages are all cached: its experiment runs none; a plug-in's are
            # reproduced from pretrain on (run, or restored from the run-cache by a repeat of this test)
            assert ran == (set() if name == "ws-fcn" else {"pretrain", "train", "infer", "crf", "evaluate"}), \
                (name, ran)
        assert rows["ws-fcn"]["miou_crf"] == rows["commit"]["miou_crf"]
    finally:
        # the experiments go, so that a next run on this repository can queue the same names; one at a time,
        # since `dvc exp remove` removes nothing when one of its names is unknown (a task that failed)
        for name in queued:
            sh([str(BIN / "dvc"), "exp", "remove", name], dvc_run, check=False)
        sh([str(BIN / "dvc"), "queue", "remove", "--all"], dvc_run, check=False)


@pytest.mark.slow
def test_voc_target_without_data_or_network_stops_in_prepare(tmp_path, monkeypatch):
    repo = make_copy(tmp_path / "repo", reduced=False)
    closed = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused at once
    monkeypatch.setenv("WSSS_VOC_URL", closed + "VOCtrainval_11-May-2012.tar")
    monkeypatch.setenv("WSSS_SBD_URL", closed + "benchmark.tgz")
    proc = sh([str(BIN / "snakemake"), "--cores", "8", "results/voc_val_miou.csv"], repo, check=False)
    assert proc.returncode != 0
    log = (repo / "results" / "logs" / "voc" / "prepare.log").read_text()
    assert "data.source" in log and "VOCtrainval_11-May-2012.tar" in log and "benchmark.tgz" in log
    assert not (repo / "data" / "voc").exists()
    assert not (repo / "results" / "voc").exists(), "nothing after prepare may run"
    printed = proc.stdout + proc.stderr
    assert "Error in rule prepare" in printed
    assert not re.search(r"^(local)?rule (pretrain|train|infer|crf|evaluate):", printed, flags=re.M)


# ---------------------------------------------------------------- the report

class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: the
    browser reads commands on its fd 3 and writes replies and events on its fd 4, each message JSON ended
    by a NUL byte), on one page of ``width`` x ``height`` CSS pixels."""

    def __init__(self, exe: str, profile: Path, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        profile.mkdir(parents=True, exist_ok=True)
        to_browser, from_browser = os.pipe(), os.pipe()
        self.stderr = open(profile / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser[0]} 4>&{from_browser[1]}', exe, "--headless",
             "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             f"--window-size={width},{height}"],
            pass_fds=(to_browser[0], from_browser[1]), stdin=subprocess.DEVNULL, stdout=self.stderr, stderr=self.stderr)
        os.close(to_browser[0])
        os.close(from_browser[1])
        self.out, self.inp = to_browser[1], from_browser[0]
        self.buffer = bytearray()
        self.events: list[dict] = []
        self.last_id = 0
        self.timeout = timeout
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.page("Page.enable")
            self.page("Runtime.enable")
            self.page("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                raise TimeoutError(f"no message from chromium in {self.timeout} s")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed its DevTools pipe (exit {self.proc.poll()})")
            self.buffer += chunk
        end = self.buffer.index(b"\0")
        raw = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its reply (the events that come first are kept in ``events``)."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self.out, data):]
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.call(method, params, self.session)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._message(deadline))

    def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event (the page's inline scripts have run)."""
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.page("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.page("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise AssertionError(f"in the page: {details.get('exception', {}).get('description') or details['text']}")
        return result["result"].get("value")

    def exceptions(self) -> list[str]:
        """The uncaught exceptions the page has thrown so far."""
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description", e["params"]["exceptionDetails"]["text"])
                for e in self.events if e.get("method") == "Runtime.exceptionThrown"]

    def screenshot(self) -> bytes:
        """A PNG of the page's viewport."""
        return base64.b64decode(self.page("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.out, self.inp):
            try:
                os.close(fd)
            except OSError:
                pass
        self.stderr.close()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def chromium_or_skip() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("needs a headless browser: Debian's chromium (as root: apt-get install -y chromium; .ci/run does)")
    return exe


# Every figure the report of TARGETS holds: (category, subcategory, label, the caption's opening as rendered)
REPORT_FIGURES = {
    "results/toy/train_curve.png": ("Training", "toy", "training curve", "Training curve of wsss train on toy"),
    "results/toy_val_iou.png": ("Evaluation", "toy val", "per-class IoU", "Per-class IoU of WS-FCN on toy val"),
    "results/toy_val_gallery.png": ("Evaluation", "toy val", "examples", "Examples from toy val."),
    "results/toy_val_iou_stage2.png": ("Second stage", "toy val", "per-class IoU",
                                       "Per-class IoU of the second stage (the network wsss retrain trained on the "
                                       "pseudo-masks) on toy val"),
    "results/toy_val_gallery_stage2.png": ("Second stage", "toy val", "examples",
                                           "Examples from toy val, second stage"),
    "results/toy_train_aug_pseudo_iou.png": ("Second stage", "toy train_aug pseudo-masks", "per-class IoU",
                                             "Per-class IoU of the pseudo-masks of toy train_aug"),
}

# Opens a figure as a reader does: its category, then its subcategory where the category has several,
# then the view button of its row, and waits for the image to be decoded; then the row's info button,
# and waits for the caption ("Description"). Returns what the page shows.
SHOW_FIGURE_JS = """
(async (category, subcategory, label) => {
    const sleep = ms => new Promise(done => setTimeout(done, ms));
    const until = async (what, find) => {
        for (let i = 0; i < 200; i++) { const found = find(); if (found) return found; await sleep(50); }
        throw new Error("not shown: " + what);
    };
    const nav = () => document.querySelector("nav");
    const click = async text => (await until("the link " + text,
        () => [...nav().querySelectorAll("a")].find(a => a.textContent.trim() === text))).click();
    await click(category);
    if (Object.keys(categories[category]).length > 1) await click(subcategory);
    const rows = () => [...nav().querySelectorAll("tbody tr")];
    const row = await until("the row " + label, () => rows().find(tr => tr.cells[0].textContent.trim() === label));
    const [view, info] = row.querySelectorAll("a");
    view.click();
    const img = await until("the figure, decoded", () => [...document.querySelectorAll("img")].find(
        i => !i.closest("nav") && i.complete && i.naturalWidth > 0));
    const box = img.getBoundingClientRect();
    const shown = {src: img.src, width: img.naturalWidth, height: img.naturalHeight, drawn: [box.width, box.height],
                   rows: rows().map(tr => tr.cells[0].textContent.trim())};
    info.click();
    await until("the caption", () => nav().textContent.includes("Description"));
    shown.info = nav().innerText;
    return shown;
})
"""


@pytest.mark.slow
def test_snakemake_report_shows_every_figure_in_a_browser(snakemake_run, tmp_path):
    """`snakemake --report` on the finished run, opened in headless Chromium and clicked through: the
    workflow description on the landing page; every figure under its category and subcategory, shown
    as the very bytes of its PNG, decoded by the browser at the file's size, with its caption rendered
    for its wildcards; no script error. The last view (the gallery of the second stage) is saved as
    ``report.png`` beside the report."""
    from PIL import Image

    exe = chromium_or_skip()
    report = tmp_path / "report.html"
    sh([str(BIN / "snakemake"), "--cores", "1", "--report", str(report), *TARGETS], snakemake_run)
    with Chromium(exe, tmp_path / "profile") as browser:
        browser.open(report.as_uri())
        title = browser.evaluate("""(async () => {
            for (let i = 0; i < 200 && !document.querySelector(".prose h1"); i++) await new Promise(r => setTimeout(r, 50));
            return document.querySelector(".prose h1") && document.querySelector(".prose").innerText;
        })()""")
        assert title and title.startswith("wsss: weakly-supervised semantic segmentation"), title
        assert "Evaluation: per-class IoU with the confusion matrix" in " ".join(title.split())
        shown_categories = browser.evaluate("categories")
        expected = {}
        for path, (category, subcategory, _, _) in REPORT_FIGURES.items():
            expected.setdefault(category, {}).setdefault(subcategory, []).append(path)
        assert {c: {s: sorted(p) for s, p in subs.items()} for c, subs in shown_categories.items()} == \
            {c: {s: sorted(p) for s, p in subs.items()} for c, subs in expected.items()}
        for path, (category, subcategory, label, caption) in REPORT_FIGURES.items():
            browser.open(report.as_uri())
            shown = browser.evaluate(f"{SHOW_FIGURE_JS}({json.dumps(category)}, {json.dumps(subcategory)}, {json.dumps(label)})")
            assert sorted(shown["rows"]) == sorted(REPORT_FIGURES[p][2] for p in expected[category][subcategory]), path
            head, payload = shown["src"].split(",", 1)
            assert head.startswith("data:image/png") and head.endswith(";base64"), (path, head)
            png = snakemake_run / path
            assert base64.b64decode(payload) == png.read_bytes(), path
            with Image.open(png) as image:
                assert (shown["width"], shown["height"]) == image.size, path
            assert min(shown["drawn"]) > 0, path
            info = " ".join(shown["info"].split())
            assert caption in info, (path, info)
            assert not any(raw in info for raw in ("{{", "{%", "``", "**")), (path, info)  # Jinja and reST rendered
        (tmp_path / "report.png").write_bytes(browser.screenshot())
        assert browser.exceptions() == []


@pytest.mark.slow
def test_dvc_plots_show_has_the_same_figures(snakemake_run, tmp_path):
    """`dvc plots show` on the finished run: each figure of the report as an image plot with the file's
    bytes, and the training log and the per-class table as data plots."""
    out = tmp_path / "plots"
    shown = json.loads(sh([str(BIN / "dvc"), "plots", "show", "--json", "-o", str(out)], snakemake_run).stdout)
    for path in REPORT_FIGURES:
        (entry,) = shown["data"][path]
        assert entry["type"] == "image" and entry["revisions"] == ["workspace"], (path, entry)
        assert Path(entry["url"]).read_bytes() == (snakemake_run / path).read_bytes(), path
    for path in ("results/toy/train_log.tsv", "results/toy_val_miou.csv"):
        (entry,) = shown["data"][path]
        assert entry["type"] == "vega" and entry["content"]["data"]["values"], path
