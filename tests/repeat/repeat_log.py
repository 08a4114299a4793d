"""A pytest plug-in that appends one JSON line per test run to the file ``$WSSS_REPEAT_LOG``.

Loaded by ``tests/repeat/run.py`` (``-p repeat_log``); not used by the suite itself. Each line is
``{"test": <node id without pytest-repeat's suffix>, "outcome": "passed" | "failed" | "skipped",
"seconds": <setup + call + teardown>, "message": <the failure's last line, failures only>}``.
A line is written when the test's teardown ends, so a run stopped at its budget keeps every
finished test. When ``$WSSS_REPEAT_DEADLINE`` (seconds since the epoch) has passed, the session stops
after the test that is running. ``$WSSS_REPEAT_SELECT`` names a JSON list of node ids (as a plain
run names them): only those tests run, in that order (pytest-repeat renames a parametrised test's
id, so the command line names the test functions and this list the cases).
"""

from __future__ import annotations

import json
import os
import time

import pytest

_PARTS: dict[str, list] = {}


def base_id(item: pytest.Item) -> str:
    """The node id as a plain run names it: pytest-repeat adds ``<step>-<count>`` to the id's
    brackets (``t[1-100]``, ``t[a-1-100]``), which is removed here."""
    nodeid = item.nodeid
    callspec = getattr(item, "callspec", None)
    if callspec is None or "__pytest_repeat_step_number" not in callspec.params:
        return nodeid
    suffix = f"{callspec.params['__pytest_repeat_step_number'] + 1}-{item.config.option.count}]"
    if nodeid.endswith("[" + suffix):
        return nodeid[: -len(suffix) - 1]
    if nodeid.endswith("-" + suffix):
        return nodeid[: -len(suffix) - 1] + "]"
    return nodeid


def pytest_collection_modifyitems(config, items):
    if "WSSS_REPEAT_SELECT" not in os.environ:
        return
    with open(os.environ["WSSS_REPEAT_SELECT"], encoding="utf-8") as f:
        order = {test: i for i, test in enumerate(json.load(f))}
    kept = [item for item in items if base_id(item) in order]
    config.hook.pytest_deselected(items=[item for item in items if base_id(item) not in order])
    items[:] = sorted(kept, key=lambda item: order[base_id(item)])


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
        line = {"test": test, "outcome": result, "seconds": round(seconds, 3)}
        if message:
            line["message"] = message
        with open(os.environ["WSSS_REPEAT_LOG"], "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
        if time.time() > float(os.environ.get("WSSS_REPEAT_DEADLINE", "inf")):
            item.session.shouldstop = "the repeat run's budget is spent"
