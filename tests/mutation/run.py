"""Mutation testing of the core modules with mutmut: run within a time budget, then report per module.

Usage (from the repository root, in the project's virtual environment with ``pip install -e ".[mutation]"``):

    python tests/mutation/run.py                      # run (or continue) within 150 min, then report
    python tests/mutation/run.py --budget 30 'wsss.model.pamr*'   # one module's mutants
    python tests/mutation/run.py --report-only        # the report from the results so far

Not a pytest test and not part of CI. mutmut (``[tool.mutmut]`` in pyproject.toml: the modules it
mutates and the tests it runs, the non-slow suite) copies the package into ``mutants/``, makes
every mutant of every function there, and runs for each mutant only the tests that call that
function. Results are kept in ``mutants/``: a later run checks only mutants it has not checked and
those of functions that changed, so a budget that runs out is continued by running again. When the
tests change, delete ``mutants/`` for a clean run (mutmut re-runs a surviving mutant only when its
function changes).

The report (printed, and written to ``--report``, default ``results/mutation/report.md``) gives per
module the mutants made, killed (a test failed, or the run timed out), survived, equivalent (listed
in ``tests/mutation/equivalent.yaml`` with why; the entry names the mutant and its mutated line, and
an entry whose line no longer matches, or whose mutant mutmut no longer makes, is reported as stale), without tests and not yet checked, and
the score killed / (made - equivalent - not checked). Every survivor not known to be equivalent is
printed with its diff. Exit status: 0 when every checked non-equivalent mutant is killed, 1 when some
survive, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENT = Path(__file__).with_name("equivalent.yaml")

# mutmut's exit codes of a mutant's test run (mutmut/stats.py), folded into the report's columns
KILLED = {1, 3, 24, -24, 36, 152, 255, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}


def run_mutmut(names: list[str], budget_min: float, children: int) -> int:
    """``mutmut run`` with one torch thread per child; interrupted (SIGINT, results kept) at the budget.

    Every mutant's pytest session makes its own ``pytest-of-<user>/pytest-N`` folder (about 0.5 GB for
    the stage tests) and pytest's clean-up of old ones does not keep up with forked sessions, so the
    run gets a temporary folder of its own (``TMPDIR``) that is deleted when it ends.
    """
    scratch = Path(tempfile.mkdtemp(prefix="wsss-mutation-"))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TMPDIR=str(scratch))
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names],
                            cwd=ROOT, env=env)
    try:
        proc.wait(timeout=budget_min * 60)
    except subprocess.TimeoutExpired:
        print(f"\nmutation: the budget of {budget_min:g} min is spent; stopping (run again to continue)")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"mutation: mutmut ran {(time.monotonic() - start) / 60:.1f} min")
    return proc.returncode


def load_results() -> dict[str, dict[str, int | None]]:
    """Module path -> mutant name -> mutmut exit code (None: not checked), from ``mutants/**/*.py.meta``."""
    config = _mutmut_config()
    results = {}
    for module in config["only_mutate"]:
        meta = ROOT / "mutants" / (module + ".meta")
        if meta.exists():
            results[module] = json.loads(meta.read_text())["exit_code_by_key"]
        else:
            results[module] = {}
    return results


def _mutmut_config() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def mutant_diff(name: str, module: str) -> str:
    """The unified diff of one mutant against the original function (mutmut's own rendering)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return get_diff_for_mutant(name, path=Path(module))
    finally:
        os.chdir(cwd)


def mutated_line(diff: str) -> str:
    """The first added line of a diff, stripped: what an equivalence entry is checked against."""
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            return line[1:].strip()
    return ""


def load_equivalent() -> dict[str, dict]:
    """``equivalent.yaml``: a list of {mutant, line, why}; keyed by mutant name."""
    entries = (yaml.safe_load(EQUIVALENT.read_text()) or []) if EQUIVALENT.exists() else []
    known = {}
    for i, entry in enumerate(entries):
        missing = {"mutant", "line", "why"} - set(entry)
        if missing:
            raise SystemExit(f"{EQUIVALENT}: entry {i} lacks {sorted(missing)}")
        known[entry["mutant"]] = entry
    return known


def report(out: Path) -> int:
    results = load_results()
    equivalent = load_equivalent()
    rows, survivors, stale, explained = [], [], [], []
    for module, codes in results.items():
        count = Counter()
        for name, code in codes.items():
            if code is None:
                count["unchecked"] += 1
            elif code in KILLED:
                count["killed"] += 1
            elif code in NO_TESTS:
                count["no tests"] += 1
            elif code in SURVIVED:
                diff = mutant_diff(name, module)
                entry = equivalent.get(name)
                if entry is not None and entry["line"].strip() == mutated_line(diff):
                    count["equivalent"] += 1
                    explained.append((module, name, entry["why"]))
                else:
                    count["survived"] += 1
                    survivors.append((module, name, diff))
                    if entry is not None:
                        stale.append(name)
            else:
                count["other"] += 1
                survivors.append((module, name, f"(mutmut exit code {code})"))
        made = len(codes)
        scored = made - count["equivalent"] - count["unchecked"]
        score = count["killed"] / scored if scored else float("nan")
        rows.append((module, made, count, score))

    lines = ["# Mutation testing of the core modules", "",
             "Made by `python tests/mutation/run.py` (mutmut; see the script's docstring). Score = killed / "
             "(made - equivalent - not checked); a timeout counts as killed, a mutant no selected test reaches "
             "as not killed.", "",
             "| module | made | killed | survived | equivalent | no tests | not checked | score |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    total = Counter()
    for module, made, count, score in rows:
        lines.append(f"| `{module}` | {made} | {count['killed']} | {count['survived'] + count['other']} | "
                     f"{count['equivalent']} | {count['no tests']} | {count['unchecked']} | {score:.1%} |")
        total.update(count)
        total["made"] += made
    scored = total["made"] - total["equivalent"] - total["unchecked"]
    lines.append(f"| all | {total['made']} | {total['killed']} | {total['survived'] + total['other']} | "
                 f"{total['equivalent']} | {total['no tests']} | {total['unchecked']} | "
                 f"{total['killed'] / scored if scored else float('nan'):.1%} |")
    lines += ["", f"## Survivors not known to be equivalent ({len(survivors)})", ""]
    for module, name, diff in survivors:
        lines += [f"### `{name}`", "", "```diff", diff, "```", ""]
    made_names = {name for codes in results.values() for name in codes}
    stale += sorted(set(equivalent) - made_names)  # the function changed or went: mutmut makes no such mutant
    if stale:
        lines += ["## Stale entries of equivalent.yaml (the mutated line changed, or no mutant has the name)", ""]
        lines += [f"- `{name}`" for name in stale] + [""]
    lines += [f"## Equivalent mutants ({len(explained)})", ""]
    lines += [f"- `{name}`: {why}" for module, name, why in explained]
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(text)
    print(f"mutation: report written to {out}")
    return 1 if survivors else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutant name patterns for mutmut (default: all)")
    parser.add_argument("--budget", type=float, default=150, help="minutes mutmut may run (default 150)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1,
                        help="mutants tested at once, one torch thread each (default: the CPU count)")
    parser.add_argument("--report-only", action="store_true", help="only report the results so far")
    parser.add_argument("--report", type=Path, default=ROOT / "results" / "mutation" / "report.md")
    args = parser.parse_args()
    if not args.report_only:
        run_mutmut(args.names, args.budget, args.max_children)
    return report(args.report)


if __name__ == "__main__":
    sys.exit(main())
