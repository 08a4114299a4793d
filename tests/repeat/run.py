"""Repeat runs: every selected test run ``--count`` times in a row, within a time budget, then a report.

Usage (from the repository root, in the project's virtual environment with ``pip install -e ".[mutation]"``,
which brings pytest-repeat):

    python tests/repeat/run.py --jobs 2                         # the non-slow suite, 100 runs each, 120 min
    python tests/repeat/run.py --budget 30 tests/test_infer_crf.py
    python tests/repeat/run.py --count 10 -- -k crf              # pytest's own options after --
    python tests/repeat/run.py --report-only

Not a pytest test and not part of CI. The positional arguments are pytest's, and only select the
tests (default ``-m "not slow"``; a selection given replaces it). Every test first runs once, which
measures it; then the tests run the rest of their count with pytest-repeat, the cheapest first
(``run_order``), in ``--jobs`` pytest processes (one thread each when there are several), a test file
wholly in one of them (``deal``). Run ``k`` of a test is
pytest-repeat's ``test[k-<count>]``, so the suite's ``seeded_rngs`` fixture, which seeds from the
node id, gives every run a seed of its own: inputs drawn from the global generators differ in each
run (inputs a test draws from a generator of its own, seeded by a constant, do not: for such a test
the runs check that its result does not vary from run to run).

Every finished run is appended to ``results/repeat/log.<digest>.jsonl`` (plug-in
``tests/repeat/repeat_log.py``), where the digest covers the package, the tests and the
configuration (not ``tests/repeat``). A run stopped at its budget is continued by running again on
the same code; other code has a log of its own. Run one at a time.

A test is done when it passed ``--count`` runs in a row. A test whose run failed, crashed its pytest
process, or was still running ``GRACE_S`` after the budget is not run again (``--rerun-failed`` runs it
again, once the cause was outside the code; its runs in a row then count from after the failure); a
test that skips is not repeated. A passed run's ``tmp_path`` is removed when the run ends
(``tmp_path_retention_policy=failed``); a failed run's is kept to look at. The report (printed, and
written to ``results/repeat/report.md``) gives the tests done, every failure with its message and the
id that re-runs it, the skipped tests and those still short of the count. Exit status: 1 when a
test's last run failed, 3 when the budget ran out first (run again to continue), else 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "repeat"
CODE = ["wsss", "tests", "params.yaml", "pyproject.toml", "workflow", "Snakefile", "dvc.yaml"]
GRACE_S = 600  # a test still running this long after the budget is killed, and reported as failed


def code_digest() -> str:
    """SHA-256 (first 12 hex digits) of every tracked or untracked, not ignored file the tests run."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", *CODE, ":!tests/repeat"],
                           cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    digest = hashlib.sha256()
    for name in sorted(files):
        path = ROOT / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def collect(selection: list[str]) -> list[str]:
    """The node ids pytest selects for ``selection`` (its arguments), in collection order."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *selection], cwd=ROOT, capture_output=True, text=True)
    ids = [line for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if proc.returncode != 0 or not ids:
        sys.exit(f"repeat: pytest collected no test from {selection}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return ids


def read_log(log: Path) -> dict[str, list[dict]]:
    """Test id -> its runs in order, from the log (a line cut short by a kill is skipped)."""
    runs: dict[str, list[dict]] = defaultdict(list)
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "test" in entry:
                runs[entry["test"]].append(entry)
    return runs


def streak(entries: list[dict]) -> int:
    """Runs passed in a row at the end of a test's runs."""
    n = 0
    for entry in reversed(entries):
        if entry["outcome"] != "passed":
            break
        n += 1
    return n


def settled(entries: list[dict], since: int = 0) -> bool:
    """Not to be run again: a run from run ``since`` on failed (or crashed or hung), or the test skips."""
    return (any(e["outcome"] == "skipped" for e in entries)
            or any(e["outcome"] == "failed" for e in entries[since:]))


def deal(tests: list[str], jobs: int, cost: dict[str, float]) -> list[list[str]]:
    """``tests`` shared among ``jobs`` processes a whole file at a time, so that no two processes make
    the same module fixtures at once (on this machine's two cores, two whole-DAG fixtures made side by
    side took 211 s and 228 s, against 50 s alone). The costliest file goes first, to the process with
    the least ``cost`` (a test's seconds for what it has left to run) so far. Each share keeps the order
    of ``tests``; with fewer files than processes, some shares are empty."""
    files: dict[str, list[str]] = defaultdict(list)
    for test in tests:
        files[test.split("::")[0]].append(test)
    shares: list[list[str]] = [[] for _ in range(jobs)]
    load = [0.0] * jobs
    for name in sorted(files, key=lambda f: -sum(cost[t] for t in files[f])):
        j = load.index(min(load))
        shares[j] += files[name]
        load[j] += sum(cost[t] for t in files[name])
    return [sorted(share, key=tests.index) for share in shares]


def run_pytest(first: dict[str, int], count: int, jobs: int, log: Path, deadline: float,
               cost: dict[str, float]) -> None:
    """The tests of ``first`` (node id -> first run to make, in order), runs ``first[t]`` to ``count``
    (pytest-repeat when ``count`` is above 1), in ``jobs`` processes with the tests dealt out a file at
    a time (``deal``); each stops after the test running at ``deadline``. A process that dies in a test,
    or is killed ``GRACE_S`` after the deadline, has that run logged as failed."""
    env = dict(os.environ, WSSS_REPEAT_LOG=str(log), WSSS_REPEAT_DEADLINE=str(deadline),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    if jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    repeat = ["--count", str(count)] if count > 1 else []
    procs = []
    for j, share in enumerate(deal(list(first), jobs, cost)):
        if not share:
            continue
        select, running = OUT / f"select.{j}.json", OUT / f"running.{j}.json"
        select.write_text(json.dumps({t: first[t] for t in share}), encoding="utf-8")
        running.write_text("", encoding="utf-8")
        functions = list(dict.fromkeys(test.split("[", 1)[0] for test in share))
        # a passed run's tmp_path is removed when it ends: 100 runs of a test would otherwise keep 100 of them
        # (the released-checkpoint test writes 580 MB a run)
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "repeat_log",
                                 "-o", "tmp_path_retention_policy=failed", *repeat, *functions],
                                cwd=ROOT, stdout=subprocess.DEVNULL, start_new_session=True,
                                env=dict(env, WSSS_REPEAT_SELECT=str(select), WSSS_REPEAT_RUNNING=str(running)))
        procs.append((proc, running))
    for proc, running in procs:
        why = None
        try:
            proc.wait(timeout=max(1.0, deadline + GRACE_S - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the test's own child processes too
            proc.wait()
            why = f"still running {GRACE_S} s after the budget; killed"
        marker = running.read_text(encoding="utf-8").strip()
        if marker:
            where = json.loads(marker)
            why = why or f"its pytest process ended in it (exit status {proc.returncode})"
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps({**where, "outcome": "failed", "seconds": None, "message": why}) + "\n")


def report(ids: list[str], runs: dict[str, list[dict]], count: int, digest: str, out: Path) -> int:
    done = [t for t in ids if streak(runs.get(t, [])) >= count]
    failed = {t: [e for e in runs.get(t, []) if e["outcome"] == "failed"] for t in ids}
    failed = {t: f for t, f in failed.items() if f}
    failing = [t for t in failed if runs[t][-1]["outcome"] == "failed"]  # not run again since
    skipped = [t for t in ids if t not in failed and any(e["outcome"] == "skipped" for e in runs.get(t, []))]
    short = [t for t in ids if t not in done and t not in failing and t not in skipped]
    total = sum(len(runs.get(t, [])) for t in ids)
    seconds = sum(e["seconds"] or 0 for t in ids for e in runs.get(t, []))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [
        "# Repeat runs", "",
        f"Code: commit {commit}, digest {digest} (package, tests and configuration as run).", "",
        f"- tests selected: {len(ids)}",
        f"- passed their last {count} runs in a row: {len(done)}",
        f"- with a failed run: {len(failed)} (the last run failed: {len(failing)})",
        f"- skipped (not repeated): {len(skipped)}",
        f"- short of {count} runs in a row: {len(short)}",
        f"- runs so far: {total}, {seconds / 60:.1f} min of test time", "",
    ]
    if failed:
        lines += ["## Failed runs", "", "| test | failed / runs | first failed run | its message |",
                  "|---|---:|---|---|"]
        for test, entries in failed.items():
            message = entries[0].get("message", "").replace("|", "\\|")
            first = entries[0].get("id", test)
            lines.append(f"| `{test}` | {len(entries)} / {len(runs[test])} | `{first}` | {message} |")
        lines += ["", "A test run again after its failure (`--rerun-failed`) keeps its failed runs here; its runs in "
                  "a row count from after the last one.", "",
                  "Re-run one failed run with its inputs: `pytest --count <n> '<its id>'`, where `<n>` is the "
                  "number after the id's last `-` (none for a first run).", ""]
    if skipped:
        lines += ["## Skipped", ""] + [f"- `{t}`" for t in skipped] + [""]
    if short:
        lines += ["## Short of the count", "", "| test | runs in a row | seconds per run |", "|---|---:|---:|"]
        for test in sorted(short, key=lambda t: _mean_seconds(runs.get(t, []))):
            entries = runs.get(test, [])
            mean = f"{_mean_seconds(entries):.2f}" if entries else "not run"
            lines.append(f"| `{test}` | {streak(entries)} | {mean} |")
        lines.append("")
    per_file: dict[str, list[str]] = defaultdict(list)
    for test in ids:
        per_file[test.split("::")[0]].append(test)
    lines += ["## Per file", "", f"| file | tests | done ({count} in a row) | runs | failed runs | minutes |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, tests in per_file.items():
        entries = [e for t in tests for e in runs.get(t, [])]
        lines.append(f"| `{name}` | {len(tests)} | {sum(t in done for t in tests)} | {len(entries)} | "
                     f"{sum(e['outcome'] == 'failed' for e in entries)} | "
                     f"{sum(e['seconds'] or 0 for e in entries) / 60:.1f} |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    return 1 if failing else 3 if short else 0


def run_order(test: str, entries: list[dict]) -> tuple[int, str, float]:
    """The order the tests' remaining runs are made in: cheapest first, by the power of two of a run's
    (lower) median seconds, and within one such band the tests of one file together, so that pytest
    does not make a module's fixtures again at each switch between files. Once a test has three runs
    or more, the median leaves out the set-up of a module fixture that its first run in a process
    paid; after the measuring run alone, that set-up counts."""
    timed = sorted(e["seconds"] for e in entries if e["seconds"] is not None)
    median = timed[(len(timed) - 1) // 2] if timed else float("inf")
    band = math.floor(math.log2(max(median, 0.25))) if timed else 1 << 30
    return band, test.split("::")[0], median


def _mean_seconds(entries: list[dict]) -> float:
    timed = [e["seconds"] for e in entries if e["seconds"] is not None]
    return sum(timed) / len(timed) if timed else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="runs in a row each test must pass (default 100)")
    parser.add_argument("--budget", type=float, default=120,
                        help=f"minutes to start runs in (default 120; a test running then may take {GRACE_S} s more)")
    parser.add_argument("--jobs", type=int, default=1, help="pytest processes at once, one thread each when above 1")
    parser.add_argument("--rerun-failed", action="store_true",
                        help="run the tests with a failed run again, once its cause outside the code is gone (a full "
                             "disk, a killed fixture); the failures stay in the log and the report")
    parser.add_argument("--report-only", action="store_true", help="only report the runs so far")
    args, selection = parser.parse_known_args()
    selection = [a for a in selection if a != "--"]
    if args.count < 1 or args.jobs < 1 or args.budget <= 0:
        parser.error("--count and --jobs must be at least 1 and --budget above 0")
    deadline = time.time() + args.budget * 60
    ids = collect(selection or ["-m", "not slow"])
    digest = code_digest()
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / f"log.{digest}.jsonl"
    runs = read_log(log)
    since = {t: len(runs.get(t, [])) if args.rerun_failed else 0 for t in ids}  # failures before these are forgiven
    while not args.report_only and time.time() < deadline:
        if code_digest() != digest:
            print("repeat: the code changed during the run; stopping (its runs so far are in the log of the old code)")
            break
        todo = [t for t in ids if streak(runs.get(t, [])) < args.count and not settled(runs.get(t, []), since[t])]
        if not todo:
            break
        unmeasured = [t for t in todo if not runs.get(t)]
        if unmeasured:
            print(f"repeat: a first run of {len(unmeasured)} tests")
            run_pytest(dict.fromkeys(unmeasured, 1), 1, args.jobs, log, deadline, dict.fromkeys(unmeasured, 1.0))
        else:
            todo.sort(key=lambda t: run_order(t, runs[t]))
            print(f"repeat: {len(todo)} tests, up to {args.count - min(len(runs[t]) for t in todo)} runs each")
            # run k of a test is pytest-repeat's [k-count]: a run continued later keeps its number
            left = {t: run_order(t, runs[t])[2] * (args.count - len(runs[t])) for t in todo}
            run_pytest({t: len(runs[t]) + 1 for t in todo}, args.count, args.jobs, log, deadline, left)
        after = read_log(log)
        if sum(map(len, after.values())) == sum(map(len, runs.values())):
            print("repeat: no test finished in the last pytest session; stopping")
            break
        runs = after
    return report(ids, runs, args.count, digest, OUT / "report.md")


if __name__ == "__main__":
    sys.exit(main())
