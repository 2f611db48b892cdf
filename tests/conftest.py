"""Test configuration: the tests test THIS checkout's minivae, and can report per-test outcomes.

1. The repository root goes first on sys.path, so `import minivae` finds the package next to the
   tests even when another minivae is pip-installed. A student editing a copy made by
   scripts/make_assignment.py is tested without reinstalling, and a grader can never grade the
   installed reference by mistake.
2. Every test is marked with the assignment topic it is FOR, so `pytest -m engine` runs the
   engine's tests: a marker written in the test file (`pytestmark = pytest.mark.engine`) wins;
   otherwise the topic map (tests/assignment_topics.json, measured by scripts/make_assignment.py)
   gives the topics a test needs, and the test is for the last of them in the order they are
   taught (the earlier ones are what it builds on). A parametrised test whose parameters were
   renamed since the map was measured takes the topics of its function's other entries.
3. `pytest --outcomes FILE` writes {"outcomes": {test id: "passed" | "failed" | "skipped"},
   "messages": {test id or test file: first line of its failure}, "details": {test id: the
   failure's first lines}, "topics": {test id: topic or null}, "durations": {test id: seconds}}
   when the run ends, for scripts/grade.py and scripts/make_assignment.py; `--select FILE` runs
   only the test ids listed in FILE.
4. `reference(name)` gives a test a worked solution from grader/reference_solutions.py (the GRU,
   Adam by hand, the cyclical schedule's published code, the free-bits modes). Student copies
   leave grader/ out; scripts/grade.py brings it (environment variable MINIVAE_GRADER). Without
   it the test skips, saying why.
"""
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_spec = importlib.util.find_spec("minivae")  # finds the package without importing it
if _spec is None or Path(_spec.origin).resolve().parent != ROOT / "minivae":
    raise ImportError(f"the tests would import minivae from {_spec and _spec.origin}, not from "
                      f"this checkout ({ROOT}); was minivae imported before pytest started?")
GRADER = Path(os.environ.get("MINIVAE_GRADER") or ROOT / "grader")
if (GRADER / "reference_solutions.py").is_file():
    sys.path.append(str(GRADER))  # appended: it can never shadow this checkout's minivae


def reference(name):
    """The worked solution `name` from grader/reference_solutions.py; skips the test without it."""
    try:
        import reference_solutions
    except ImportError:
        pytest.skip("needs the grader's reference solutions (not in a student copy; "
                    "scripts/grade.py run by your instructor brings them)")
    return getattr(reference_solutions, name)


def _topic_map():
    """(topics in teaching order, {test id: topics it needs}) from the topic map, if there is one."""
    try:
        with open(ROOT / "tests" / "assignment_topics.json") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return [], {}
    return data.get("topics", []), data.get("tests", {})


TOPICS, NEEDS = _topic_map()
TOPIC_OF = {}  # test id -> the topic it is for (None: no topic), filled at collection


def needs_of(test, needs):
    """The topics `test` needs by the map; a parametrised test missing from it (its parameters
    renamed) needs what the map's entries for the same function need."""
    if test in needs or "[" not in test:
        return needs.get(test)
    base = test.split("[")[0] + "["
    same = [n for t, n in needs.items() if t.startswith(base)]
    return sorted({u for n in same for u in n}, key=TOPICS.index) if same else None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    chosen = config.getoption("select")
    if chosen:  # only the listed test ids (scripts/grade.py); ids no longer existing are ignored
        with open(chosen) as f:
            wanted = set(json.load(f))
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in wanted])
        items[:] = [i for i in items if i.nodeid in wanted]
    for item in items:
        marked = [m.name for m in item.iter_markers() if m.name in TOPICS]
        needs = needs_of(item.nodeid, NEEDS)
        topic = marked[0] if marked else max(needs, key=TOPICS.index) if needs else None
        if topic and not marked:
            item.add_marker(topic)
        TOPIC_OF[item.nodeid] = topic


def pytest_addoption(parser):
    parser.addoption("--outcomes", metavar="FILE",
                     help="write each test's outcome to FILE as JSON (used by scripts/grade.py)")
    parser.addoption("--select", metavar="FILE", help="run only the test ids listed in FILE (a JSON list)")


def pytest_configure(config):
    if config.getoption("outcomes"):
        config.pluginmanager.register(_OutcomeRecorder(config.getoption("outcomes")), "minivae_outcomes")


class _OutcomeRecorder:
    """Collects the outcome of every test (a failure in setup or teardown counts as failed)."""

    def __init__(self, path):
        self.path, self.outcomes, self.messages = os.path.abspath(path), {}, {}
        self.details, self.durations = {}, {}

    def pytest_runtest_logreport(self, report):
        previous = self.outcomes.get(report.nodeid)
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
            crash = getattr(report.longrepr, "reprcrash", None)
            text = crash.message if crash is not None else str(report.longrepr)
            self.messages.setdefault(report.nodeid, (text.strip().splitlines() or [""])[0][:300])
            self.details.setdefault(report.nodeid, [line[:400] for line in text.strip().splitlines()[:14]])
        elif report.skipped and previous != "failed":
            self.outcomes[report.nodeid] = "skipped"
        elif report.when == "call" and previous is None:
            self.outcomes[report.nodeid] = "passed"

    def pytest_collectreport(self, report):
        if report.failed:  # a test file that does not even import: none of its tests ran
            self.messages[report.nodeid] = str(report.longrepr).strip().splitlines()[-1][:300]

    def pytest_sessionfinish(self, session):
        # Written with json + os.replace rather than minivae.fileio.write_json: a student's
        # package that does not import must still get its report.
        directory = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".outcomes.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"outcomes": self.outcomes, "messages": self.messages, "details": self.details,
                       "topics": {t: TOPIC_OF.get(t) for t in self.outcomes},
                       "durations": self.durations}, f, indent=1)
        os.replace(tmp, self.path)
