"""A pytest plug-in that appends one JSON line per test run to the file ``$WSSS_REPEAT_LOG``.

Loaded by ``tests/repeat/run.py`` (``-p repeat_log``); not used by the suite itself. Each line is
``{"test": <node id of a plain run>, "id": <the run's own node id>, "outcome": "passed" | "failed" |
"skipped", "seconds": <setup + call + teardown>, "message": <the failure's message, failures only>}``.
pytest-repeat names run ``k`` of ``n`` ``test[k-n]`` (``test[a-k-n]`` for a parametrised case), and
the suite's ``seeded_rngs`` fixture seeds from that id, so ``pytest --count n '<id>'`` re-runs a
logged run with its inputs.

- A line is written when the test's teardown ends, so a session stopped early keeps every finished
  run. While a test runs, its ids (``test`` and ``id``, as JSON) are in the file
  ``$WSSS_REPEAT_RUNNING``, emptied when it ends: a process that dies or is killed leaves there the
  test it was in.
- When ``$WSSS_REPEAT_DEADLINE`` (seconds since the epoch) has passed, the session stops after the
  test that is running.
- ``$WSSS_REPEAT_SELECT`` names a JSON object {node id of a plain run: first step}: only those tests
  run, in that order, and of a repeated test only the runs from that step on (1 is the first run;
  the command line names the test functions, since pytest-repeat renames a parametrised case).
"""

from __future__ import annotations

import json
import os
import time

import pytest

_PARTS: dict[str, list] = {}
_STEP = "__pytest_repeat_step_number"


def step(item: pytest.Item) -> int:
    """The run's number under pytest-repeat, from 1 (1 without pytest-repeat)."""
    callspec = getattr(item, "callspec", None)
    return callspec.params[_STEP] + 1 if callspec is not None and _STEP in callspec.params else 1


def base_id(item: pytest.Item) -> str:
    """The node id as a plain run names it: pytest-repeat adds ``<step>-<count>`` to the id's
    brackets (``t[1-100]``, ``t[a-1-100]``), which is removed here."""
    nodeid = item.nodeid
    callspec = getattr(item, "callspec", None)
    if callspec is None or _STEP not in callspec.params:
        return nodeid
    suffix = f"{step(item)}-{item.config.option.count}]"
    if nodeid.endswith("[" + suffix):
        return nodeid[: -len(suffix) - 1]
    if nodeid.endswith("-" + suffix):
        return nodeid[: -len(suffix) - 1] + "]"
    return nodeid


def pytest_collection_modifyitems(config, items):
    if "WSSS_REPEAT_SELECT" not in os.environ:
        return
    with open(os.environ["WSSS_REPEAT_SELECT"], encoding="utf-8") as f:
        first = json.load(f)
    order = {test: i for i, test in enumerate(first)}
    kept = [item for item in items if base_id(item) in first and step(item) >= first[base_id(item)]]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = sorted(kept, key=lambda item: order[base_id(item)])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if "WSSS_REPEAT_RUNNING" in os.environ:
        with open(os.environ["WSSS_REPEAT_RUNNING"], "w", encoding="utf-8") as f:
            json.dump({"test": base_id(item), "id": item.nodeid}, f)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    parts = _PARTS.setdefault(item.nodeid, [base_id(item), "passed", 0.0, ""])
    parts[2] += report.duration
    if report.failed and parts[1] != "failed":
        parts[1] = "failed"
        crash = getattr(report.longrepr, "reprcrash", None)
        text = crash.message if crash is not None else (report.longreprtext.strip().splitlines() or [""])[-1]
        parts[3] = " ".join(text.split())[:300]
    elif report.skipped and parts[1] == "passed":
        parts[1] = "skipped"
    if call.when == "teardown":
        test, result, seconds, message = _PARTS.pop(item.nodeid)
        line = {"test": test, "id": item.nodeid, "outcome": result, "seconds": round(seconds, 3)}
        if message:
            line["message"] = message
        with open(os.environ["WSSS_REPEAT_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
        if "WSSS_REPEAT_RUNNING" in os.environ:
            open(os.environ["WSSS_REPEAT_RUNNING"], "w").close()
        if time.time() > float(os.environ.get("WSSS_REPEAT_DEADLINE", "inf")):
            item.session.shouldstop = "the repeat run's budget is spent"
