"""The SLURM profile (profiles/slurm) and its local counterpart (profiles/local).

Without SLURM: both profiles parse, share their resource defaults, and the SLURM one plans every
stage's resources and turns them into the sbatch options the executor plug-in submits.

With SLURM installed (Debian: slurmctld slurmd slurm-client munge; `.ci/run` installs them): a
one-node cluster without an accounting database is started in a temporary folder, the reduced toy
DAG runs through it and gives the mIoU of the same DAG run locally, and a failing job is reported
as failed rather than waited on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from test_engines import BIN, REPO, SINGLE_STAGE, make_copy, set_param
from test_engines import env as engine_env

SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
LOCAL_PROFILE = REPO / "profiles" / "local" / "config.yaml"
TOY_TARGET = "results/toy_val_miou.csv"
SMALLER = {"data.toy.n_train": 16, "data.toy.n_val": 4}  # the reduced DAG on fewer images: run twice here


def small_copy(dest: Path) -> Path:
    """The reduced repository copy on fewer images (the same stages and resources), committed."""
    repo = make_copy(dest)
    for key, value in SMALLER.items():
        set_param(repo / "params.yaml", key, value)
    subprocess.run(["git", "commit", "-qam", "fewer images"], cwd=repo, check=True)
    return repo
VOC_TARGET = "results/voc_val_miou.csv"
# SLURM's default MinJobAge: how long slurmctld, hence squeue, keeps a finished job
DEFAULT_MIN_JOB_AGE_S = 300
# the programs the one-node cluster needs (the daemons are under /usr/sbin on Debian)
SLURM_PROGRAMS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun", "scancel"]
PLUGIN_HINT = 'the SLURM executor plug-in is not installed: pip install -e ".[slurm]"'
INSTALL_HINT = ("install it with `apt-get install -y slurmctld slurmd slurm-client munge` (Debian/Ubuntu, as root; "
                "`.ci/run` does this before the tests)")


def profile(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def run(args: list[str], cwd: Path, extra_env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """A process with the engine tests' environment (plus ``extra_env``); a timeout is a test failure
    that says what was running, never a hang."""
    environment = engine_env()
    environment.update(extra_env or {})
    try:
        return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        pytest.fail(f"{' '.join(args)} did not finish within {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")


def planned_jobs(output: str) -> list[dict]:
    """Every job of a dry run's listing: its rule, wildcards, threads (1 when not listed) and resources."""
    jobs, job = [], None
    for line in output.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):", line)
        if head:
            job = {"rule": head.group(1), "wildcards": {}, "threads": 1, "resources": {}}
            jobs.append(job)
            continue
        field = re.match(r"^\s+(wildcards|threads|resources): (.*)$", line)
        if job is None or not field:
            continue
        key, value = field.groups()
        if key == "threads":
            job["threads"] = int(value)
        else:
            pairs = dict(item.split("=", 1) for item in value.split(", "))
            job[key] = {k: int(v) if v.isdigit() else v for k, v in pairs.items()}
    return jobs


class _Resources(dict):
    """A job's resources as the executor plug-in reads them: ``.get(name)`` and ``.name``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def sbatch_call(job: dict, settings: dict) -> str:
    """The sbatch command line the SLURM executor plug-in builds for a planned job."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    stub = SimpleNamespace(resources=_Resources(job["resources"]), threads=job["threads"], name=job["rule"],
                           wildcards=job["wildcards"], is_group=lambda: False)
    params = {"run_uuid": "run", "slurm_logfile": "log/%j.log", "comment_str": f"rule_{job['rule']}",
              "account": "", "partition": "", "workdir": "/work"}
    options = SimpleNamespace(requeue=settings.get("slurm-requeue", False), no_requeue=settings.get("slurm-no-requeue", False),
                              qos=settings.get("slurm-qos"), reservation=settings.get("slurm-reservation"))
    return get_submit_command(stub, params, settings=options) + set_gres_string(stub)


# ---------------------------------------------------------------- without SLURM

def test_profiles_parse_and_share_the_resource_defaults():
    slurm, local = profile(SLURM_PROFILE), profile(LOCAL_PROFILE)
    assert slurm["executor"] == "slurm" and local["executor"] == "local"
    # status from squeue: sacct needs an accounting database, and without one the plug-in loses its jobs
    assert slurm["slurm-status-command"] == "squeue"
    # below MinJobAge / 3 the plug-in keeps squeue rather than falling back to sacct
    assert 3 * slurm["slurm-init-seconds-before-status-checks"] <= DEFAULT_MIN_JOB_AGE_S
    assert slurm["slurm-no-requeue"] is True and slurm["latency-wait"] > 0
    assert slurm["max-threads"] <= slurm["cores"] and slurm["jobs"] >= 1
    assert slurm["default-resources"] == local["default-resources"]
    assert {"gpu", "mem_mb", "runtime"} <= set(slurm["default-resources"])
    # every key is one of Snakemake's options (with the plug-in installed, the slurm-* ones too)
    pytest.importorskip("snakemake_executor_plugin_slurm", reason=PLUGIN_HINT)
    usage = run([str(BIN / "snakemake"), "--help"], REPO).stdout
    for key in [*slurm, *local]:
        assert re.search(rf"--{re.escape(key)}(?![\w-])", usage), key


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason=PLUGIN_HINT)
    return make_copy(tmp_path_factory.mktemp("profiles"), reduced=False)


def dry_run(repo: Path, *args: str) -> list[dict]:
    proc = run([str(BIN / "snakemake"), "--dry-run", "--forceall", *args], repo)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return planned_jobs(proc.stdout)


def test_slurm_profile_maps_each_stages_resources_to_sbatch(repo_copy):
    settings = profile(SLURM_PROFILE)
    jobs = dry_run(repo_copy, "--profile", "profiles/slurm", VOC_TARGET, TOY_TARGET)
    assert sorted((j["rule"], j["wildcards"]["dataset"]) for j in jobs) == sorted(
        (rule, dataset) for rule in SINGLE_STAGE for dataset in ("voc", "toy"))
    per_job_cap = min(settings["cores"], settings["max-threads"])
    for job in jobs:
        res = job["resources"]
        assert all(isinstance(res[key], int) for key in ("gpu", "mem_mb", "runtime")), job
        assert 1 <= job["threads"] <= per_job_cap, job
        call = sbatch_call(job, settings)
        assert f" --mem {res['mem_mb']}" in call, call
        assert f" -t {res['runtime']}" in call, call  # minutes
        assert f" --cpus-per-task={job['threads']}" in call, call
        assert (f" --gpus={res['gpu']}" in call) == (res["gpu"] > 0) and "--gpus=0" not in call, call
        assert " --no-requeue" in call, call
    by_key = {(j["rule"], j["wildcards"]["dataset"]): j for j in jobs}
    for rule in ("pretrain", "train", "infer"):  # the network on VOC: a GPU and all the threads a job may have
        assert by_key[rule, "voc"]["resources"]["gpu"] == 1 and by_key[rule, "voc"]["threads"] == per_job_cap, rule
        assert by_key[rule, "toy"]["resources"]["gpu"] == 0, rule  # the embedded dataset runs on CPUs


def test_local_profile_plans_the_same_resources_as_the_slurm_one(repo_copy):
    def plan(name: str) -> dict:
        jobs = dry_run(repo_copy, "--profile", f"profiles/{name}", "--cores", "4", VOC_TARGET)
        return {j["rule"]: (j["threads"], {k: j["resources"][k] for k in ("gpu", "mem_mb", "runtime")}) for j in jobs}

    local = plan("local")
    assert set(local) == set(SINGLE_STAGE) and local == plan("slurm")


# ---------------------------------------------------------------- a one-node SLURM cluster

def _free_ports(count: int) -> list[int]:
    """Distinct TCP ports nothing listens on (all held open together while they are chosen)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} was not written)"


class Cluster:
    """munged, slurmctld and slurmd for one node (this machine), everything under one temporary folder."""

    def __init__(self, programs: dict[str, str]):
        self.programs = programs
        # short: munge's socket path must fit in a Unix socket address (108 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="wsss-slurm-", dir="/tmp"))
        self.conf = self.root / "slurm.conf"
        self.cpus = os.cpu_count() or 1
        meminfo = Path("/proc/meminfo").read_text()
        total_mb = int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, flags=re.M).group(1)) // 1024
        self.memory_mb = total_mb - min(2048, total_mb // 4)  # what SLURM may give out, less a margin for the OS
        self.daemons: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.bin = self.root / "bin"

    @property
    def env(self) -> dict:
        """SLURM_CONF for the client commands, and on PATH first an `srun` that keeps it. The slurm-jobstep
        plug-in clears every SLURM_* variable before the `srun` that starts a job's step, so on the node
        srun must find slurm.conf by itself, as it does at /etc/slurm/slurm.conf on an ordinary cluster;
        this cluster's configuration lives in a temporary folder instead."""
        return {"SLURM_CONF": str(self.conf), "PATH": f"{self.bin}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                "OMP_NUM_THREADS": "1"}

    def client(self, *args: str, timeout: int = 20) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(list(args), 124, "", f"{args[0]} timed out after {timeout} s")

    def _start(self, name: str, args: list[str]) -> None:
        self.logs[name] = self.root / "log" / f"{name}.out"
        with open(self.logs[name], "w") as out:
            self.daemons[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  env={**os.environ, **self.env}, start_new_session=True)

    def _wait(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{self.report()}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} not within {timeout:.0f} s:\n{self.report()}")

    def report(self) -> str:
        files = [*self.logs.values(), self.root / "log" / "slurmctld.log", self.root / "log" / "slurmd.log"]
        return "\n".join(f"--- {path.name}\n{_tail(path)}" for path in files)

    def start(self) -> None:
        for sub in ("munge", "state", "spool", "log", "bin"):
            (self.root / sub).mkdir()
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = self.root / "munge" / "munge.sock"
        self._start("munged", [self.programs["munged"], "--foreground", "--force", f"--key-file={key}",
                               f"--socket={sock}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
        self.logs["munged.log"] = self.root / "log" / "munged.log"
        self._wait("munged's socket", sock.exists, 20)

        log = self.root / "log"
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text("\n".join([
            "ClusterName=wsss-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={sock}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}",
            f"SlurmdLogFile={log / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            # no accounting database: sacct cannot answer, squeue (slurmctld) can
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",
            "SchedulerType=sched/builtin",
            "ReturnToService=2",
            # finished jobs stay visible to squeue for an hour: the tests read their final state
            "MinJobAge=3600",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{self.programs["srun"]}" "$@"\n')
        srun.chmod(0o755)
        self._start("slurmctld", [self.programs["slurmctld"], "-D", "-f", str(self.conf)])
        self._start("slurmd", [self.programs["slurmd"], "-D", "-N", "localhost", "-f", str(self.conf)])

        def idle() -> bool:
            proc = self.client(self.programs["sinfo"], "--noheader", "--Node", "--format=%N %t", timeout=10)
            return proc.returncode == 0 and proc.stdout.split() == ["localhost", "idle"]

        self._wait("the node localhost idle in sinfo", idle, 60)

    def jobs(self) -> dict[str, dict]:
        """Every job slurmctld still holds (finished ones included): id -> name, state, CPUs, memory, time limit, comment."""
        proc = self.client(self.programs["squeue"], "--states=all", "--noheader", "--format=%i|%j|%T|%C|%m|%l|%k")
        assert proc.returncode == 0, proc.stderr
        fields = ("name", "state", "cpus", "memory", "time_limit", "comment")
        return {line.split("|")[0]: dict(zip(fields, line.split("|")[1:])) for line in proc.stdout.splitlines() if line}

    def stop(self) -> None:
        ids = self.client(self.programs["squeue"], "--noheader", "--format=%i", timeout=10).stdout.split()
        if ids:
            self.client(self.programs["scancel"], *ids, timeout=10)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.daemons.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def _find(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


@pytest.fixture(scope="module")
def slurm():
    pytest.importorskip("snakemake_executor_plugin_slurm", reason=PLUGIN_HINT)
    programs = {name: _find(name) for name in SLURM_PROGRAMS}
    missing = [name for name, path in programs.items() if path is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found): {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs its daemons as root (SlurmUser=root); run the tests as root")
    cluster = Cluster(programs)
    try:
        cluster.start()
    except RuntimeError as exc:
        cluster.stop()
        pytest.fail(f"could not start a one-node SLURM cluster: {exc}")
    yield cluster
    cluster.stop()


def _minutes(time_limit: str) -> int:
    """squeue's time limit ([days-][hours:]minutes:seconds) in minutes."""
    days, _, clock = time_limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def _megabytes(memory: str) -> int:
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}
    return round(float(memory[:-1]) * scale[memory[-1]]) if memory[-1] in scale else int(memory)


def submitted_jobs(printed: str) -> dict[str, Path]:
    """``{SLURM job id: its log file}`` for every job a Snakemake run submitted, from the SLURM executor
    plugin's "has been submitted with SLURM jobid N (log: PATH)." lines in the run's output."""
    return {job_id: Path(log) for job_id, log in
            re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", printed)}


def _fast_polling() -> list[str]:
    """Status checks every few seconds rather than the profile's cluster-friendly pace (the stages take seconds here)."""
    return ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1"]


@pytest.mark.slow
def test_a_failing_slurm_job_is_reported_not_waited_on(slurm, tmp_path):
    """A job that exits 3 ends FAILED in SLURM and Snakemake reports it and stops, with no accounting
    database (sacct answers nothing here: the status can only come from squeue)."""
    sacct = _find("sacct")
    if sacct:
        assert slurm.client(sacct, "--noheader").returncode != 0
    (tmp_path / "Snakefile").write_text(
        'rule broken:\n    output: "never.txt"\n    resources: mem_mb=100, runtime=2\n'
        '    shell: "echo the job ran on $SLURM_JOB_ID; exit 3"\n')
    proc = run([str(BIN / "snakemake"), "--profile", str(SLURM_PROFILE.parent), "--cores", "1", *_fast_polling(),
                "never.txt"], tmp_path, slurm.env, timeout=180)
    printed = proc.stdout + proc.stderr
    assert proc.returncode != 0, printed[-3000:]
    assert "Error in rule broken" in printed and "SLURM status is: 'FAILED'" in printed, printed[-3000:]
    logs = list((tmp_path / ".snakemake" / "slurm_logs" / "rule_broken").rglob("*.log"))
    assert len(logs) == 1 and re.search(r"the job ran on \d+", logs[0].read_text()), logs
    # this run's one job (the cluster keeps earlier runs' jobs for MinJobAge)
    ids = list(submitted_jobs(printed))
    assert len(ids) == 1, printed[-3000:]
    job = slurm.jobs().get(ids[0])
    assert job and job["comment"] == "rule_broken" and job["state"] == "FAILED", (ids, job)
    assert not (tmp_path / "never.txt").exists()


@pytest.mark.slow
def test_a_resource_the_cluster_lacks_is_refused_at_submission(slurm, tmp_path):
    """A job asking for a GPU on a cluster without any is refused by sbatch before it runs: Snakemake
    stops with SLURM's message naming the resource, and never waits on it."""
    (tmp_path / "Snakefile").write_text(
        'rule wants_gpu:\n    output: "never.txt"\n    resources: gpu=1, mem_mb=100, runtime=2\n'
        '    shell: "touch {output}"\n')
    proc = run([str(BIN / "snakemake"), "--profile", str(SLURM_PROFILE.parent), "--cores", "1", *_fast_polling(),
                "never.txt"], tmp_path, slurm.env, timeout=180)
    printed = proc.stdout + proc.stderr
    assert proc.returncode != 0, printed[-3000:]
    assert "Error in rule wants_gpu" in printed and "SLURM sbatch failed" in printed, printed[-3000:]
    assert "Invalid generic resource (gres) specification" in printed and "--gpus=1" in printed, printed[-3000:]
    assert not (tmp_path / "never.txt").exists()
    assert not [job for job in slurm.jobs().values() if job["comment"].startswith("rule_wants_gpu")]


@pytest.mark.slow
def test_toy_dag_through_slurm_gives_the_local_result(slurm, tmp_path):
    """The reduced toy DAG with profiles/slurm: every stage one SLURM job with its rule's CPUs, memory
    and time limit, each with its SLURM log, and the same metrics as the DAG run with profiles/local."""
    cores = str(slurm.cpus)  # the node's CPUs: the threaded stages ask for min(cores, max-threads) of them
    repo = small_copy(tmp_path / "slurm")
    plan = run([str(BIN / "snakemake"), "--profile", "profiles/slurm", "--cores", cores, "--dry-run", TOY_TARGET], repo)
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = {job["rule"]: job for job in planned_jobs(plan.stdout)}
    assert set(planned) == set(SINGLE_STAGE)
    largest = max(job["resources"]["mem_mb"] for job in planned.values())
    if largest > slurm.memory_mb:
        pytest.skip(f"the toy DAG's jobs ask for up to {largest} MB; this machine's node has {slurm.memory_mb} MB")

    proc = run([str(BIN / "snakemake"), "--profile", "profiles/slurm", "--cores", cores, *_fast_polling(), TOY_TARGET],
               repo, slurm.env, timeout=1200)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 0, printed[-6000:]
    assert not re.search(r"^localrule ", printed, flags=re.M)  # nothing ran outside SLURM
    run_id = re.search(r"SLURM run ID: (\S+)", printed).group(1)
    submitted = submitted_jobs(printed)
    jobs = {job_id: job for job_id, job in slurm.jobs().items() if job["name"] == run_id}
    assert set(jobs) == set(submitted) and len(jobs) == len(SINGLE_STAGE), (jobs, submitted)
    for job_id, job in jobs.items():
        rule = re.match(r"rule_(\w+?)_wildcards_", job["comment"]).group(1)
        want = planned[rule]
        assert job["state"] == "COMPLETED", (rule, job)
        assert int(job["cpus"]) == want["threads"], (rule, job, want)
        assert _megabytes(job["memory"]) == want["resources"]["mem_mb"], (rule, job, want)
        assert _minutes(job["time_limit"]) == want["resources"]["runtime"], (rule, job, want)
        log = submitted[job_id]
        assert log.parent.parent.name == f"rule_{rule}" and log.name == f"{job_id}.log", log
        text = log.read_text()
        assert f"rule {rule}:" in text and "--executor slurm-jobstep" in text, text[-2000:]
    assert sorted(re.match(r"rule_(\w+?)_wildcards_", j["comment"]).group(1) for j in jobs.values()) == sorted(SINGLE_STAGE)

    local = small_copy(tmp_path / "local")
    proc = run([str(BIN / "snakemake"), "--profile", "profiles/local", "--cores", cores, TOY_TARGET], local,
               {"OMP_NUM_THREADS": "1"}, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    on_slurm = json.loads((repo / "results" / "metrics" / "toy_val.json").read_text())
    here = json.loads((local / "results" / "metrics" / "toy_val.json").read_text())
    assert on_slurm == here  # the metric files' six decimals
    assert (repo / TOY_TARGET).read_text() == (local / TOY_TARGET).read_text()
