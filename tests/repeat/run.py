"""Repeat runs: every selected test run ``--count`` times in a row, within a time budget, then a report.

Usage (from the repository root, in the project's virtual environment with ``pip install -e ".[mutation]"``,
which brings pytest-repeat):

    python tests/repeat/run.py                                  # the non-slow suite, 100 runs each, 120 min
    python tests/repeat/run.py --budget 30 tests/test_infer_crf.py
    python tests/repeat/run.py --jobs 2                         # two pytest processes of one thread each
    python tests/repeat/run.py --report-only

Not a pytest test and not part of CI. Every test first runs once, which measures it; then the tests
run the rest of their count with pytest-repeat, the cheapest first. pytest-repeat names the runs
``test[1-99]`` ... ``test[99-99]``, so the seed the suite's ``seeded_rngs`` fixture derives from the
node id differs in every run: a test's random inputs are drawn anew each time, as they were in an
unseeded suite. Every finished run is appended to ``results/repeat/log.jsonl`` (plug-in
``tests/repeat/repeat_log.py``), so a run stopped at its budget is continued by running again, as
long as the code is the same: the log is keyed on a digest of the package, the tests and the
configuration, and a different digest starts a new log (the old one is kept as ``log.<digest>.jsonl``).

A test is done when its last ``--count`` runs passed. The report (printed, and written to
``results/repeat/report.md``) gives the tests done, those still short of the count, and every
failure with its message. Exit status: 1 when a run failed, else 0 (also when the budget ran out
first: run again to continue).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "repeat"
CODE = ["wsss", "tests", "params.yaml", "pyproject.toml", "workflow", "Snakefile", "dvc.yaml"]
GRACE_S = 600  # a test still running this long after the deadline is killed (its run is not counted)


def code_digest() -> str:
    """SHA-256 (first 12 hex digits) of every tracked or untracked, not ignored file the tests run."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "--", *CODE], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
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
        for line in log.read_text(encoding="utf-8").splitlines()[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            runs[entry["test"]].append(entry)
    return runs


def streak(entries: list[dict]) -> int:
    """Runs passed (or skipped) in a row at the end of a test's runs."""
    n = 0
    for entry in reversed(entries):
        if entry["outcome"] == "failed":
            break
        n += 1
    return n


def run_pytest(ids: list[str], count: int, jobs: int, log: Path, deadline: float) -> None:
    """The tests ``ids`` ``count`` times each (pytest-repeat when above 1), in ``jobs`` processes of
    one thread each (``ids`` dealt out in turn), each stopping after the test running at ``deadline``."""
    env = dict(os.environ, WSSS_REPEAT_LOG=str(log), WSSS_REPEAT_DEADLINE=str(deadline),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    if jobs > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    repeat = ["--count", str(count)] if count > 1 else []
    procs = []
    for j in range(jobs):
        share = ids[j::jobs]
        if not share:
            continue
        select = log.with_name(f"select.{j}.json")
        select.write_text(json.dumps(share), encoding="utf-8")
        functions = list(dict.fromkeys(test.split("[", 1)[0] for test in share))
        procs.append(subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                                       "repeat_log", *repeat, *functions], cwd=ROOT,
                                      env=dict(env, WSSS_REPEAT_SELECT=str(select)), stdout=subprocess.DEVNULL))
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline + GRACE_S - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(ids: list[str], runs: dict[str, list[dict]], count: int, digest: str, out: Path) -> int:
    done = [t for t in ids if streak(runs.get(t, [])) >= count]
    short = [t for t in ids if t not in done]
    failed = {t: [e for e in runs.get(t, []) if e["outcome"] == "failed"] for t in ids}
    failed = {t: f for t, f in failed.items() if f}
    total = sum(len(runs.get(t, [])) for t in ids)
    seconds = sum(e["seconds"] for t in ids for e in runs.get(t, []))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [
        "# Repeat runs", "",
        f"Code: commit {commit}, digest {digest} (package, tests and configuration as run).", "",
        f"- tests selected: {len(ids)}",
        f"- passed their last {count} runs in a row: {len(done)}",
        f"- short of {count} runs in a row: {len(short)}",
        f"- runs so far: {total}, {seconds / 60:.1f} min of test time",
        f"- tests with a failed run: {len(failed)}", "",
    ]
    if failed:
        lines += ["## Failed runs", "", "| test | failed / runs | last message |", "|---|---:|---|"]
        for test, entries in failed.items():
            message = entries[-1].get("message", "").replace("|", "\\|")
            lines.append(f"| `{test}` | {len(entries)} / {len(runs[test])} | {message} |")
        lines.append("")
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
                     f"{sum(e['outcome'] == 'failed' for e in entries)} | {sum(e['seconds'] for e in entries) / 60:.1f} |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    return 1 if failed else 0


def _mean_seconds(entries: list[dict]) -> float:
    return sum(e["seconds"] for e in entries) / len(entries) if entries else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("selection", nargs="*", help='pytest arguments that select tests (default: -m "not slow")')
    parser.add_argument("--count", type=int, default=100, help="runs in a row each test must pass (default 100)")
    parser.add_argument("--budget", type=float, default=120, help="minutes to run (default 120)")
    parser.add_argument("--jobs", type=int, default=1, help="pytest processes at once, one thread each when above 1")
    parser.add_argument("--report-only", action="store_true", help="only report the runs so far")
    args = parser.parse_args()
    if args.count < 1 or args.jobs < 1 or args.budget <= 0:
        parser.error("--count and --jobs must be at least 1 and --budget above 0")
    deadline = time.time() + args.budget * 60
    ids = collect(args.selection or ["-m", "not slow"])
    digest = code_digest()
    log = OUT / "log.jsonl"
    OUT.mkdir(parents=True, exist_ok=True)
    if log.exists() and log.read_text(encoding="utf-8").split("\n", 1)[0] != json.dumps({"digest": digest}):
        old = json.loads(log.read_text(encoding="utf-8").split("\n", 1)[0]).get("digest", "unknown")
        log.rename(OUT / f"log.{old}.jsonl")
        print(f"repeat: the code changed since the log's runs (digest {old}); starting a new log")
    if not log.exists():
        log.write_text(json.dumps({"digest": digest}) + "\n", encoding="utf-8")
    while not args.report_only and time.time() < deadline:
        runs = read_log(log)
        # a test with a failed run is not run again: the failure is reported, the test needs a fix
        todo = [t for t in ids if streak(runs.get(t, [])) < args.count
                and not any(e["outcome"] == "failed" for e in runs.get(t, []))]
        if not todo:
            break
        unmeasured = [t for t in todo if not runs.get(t)]
        if unmeasured:
            print(f"repeat: a first run of {len(unmeasured)} tests")
            run_pytest(unmeasured, 1, args.jobs, log, deadline)
            continue
        # the rest of every test's count, grouped by what is left, the cheapest group and test first
        left: dict[int, list[str]] = defaultdict(list)
        for test in todo:
            left[args.count - streak(runs[test])].append(test)
        remaining, group = min(left.items(), key=lambda kv: sum(_mean_seconds(runs[t]) for t in kv[1]) * kv[0])
        group.sort(key=lambda t: _mean_seconds(runs[t]))
        print(f"repeat: {len(group)} tests, {remaining} runs each")
        before = sum(len(v) for v in runs.values())
        run_pytest(group, remaining, args.jobs, log, deadline)
        if sum(len(v) for v in read_log(log).values()) == before:
            print("repeat: no test finished in the last pytest session; stopping")
            break
    return report(ids, read_log(log), args.count, digest, OUT / "report.md")


if __name__ == "__main__":
    sys.exit(main())
