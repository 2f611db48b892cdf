"""The topic map, tests/assignment_topics.json: for each test of the default suite, the
assignment topics whose solution regions it needs. Measured, never written by hand:

    python scripts/make_assignment.py --update-map                 # the whole suite, 1 + 8 runs
    python scripts/make_assignment.py --update-map tests/test_x.py # only these tests, merged in

A test needs topic T if it fails in a copy with only T's regions blanked. Not a script of its
own: make_assignment.py imports it (and re-exports its names); grade.py and tests/conftest.py
read the map.
"""
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import assignment_lib as lib
from assignment_lib import TOPIC_MAP, _pytest, run_tests

ROOT = Path(__file__).resolve().parents[1]


def measure_topic_map(root=ROOT, log=print, tests=(), jobs=None):
    """{test id: [topics it needs]} for the default suite (or just `tests`), by blanking one
    topic at a time.

    Runs the tests on a plain copy (every one must pass: RuntimeError otherwise), then on one
    copy per topic with only that topic blanked: a test needs T if it fails there. The 1 + 8
    runs go `jobs` at a time (default: one per core).
    """
    import make_assignment  # it imports this module
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="minivae-topic-map-") as tmp:
        def run(topic):
            copy = Path(tmp) / (topic or "reference")
            make_assignment.make_assignment(copy, topics=[topic] if topic else (), root=root, student=False)
            try:
                return topic, run_tests(copy, list(tests))
            finally:
                shutil.rmtree(copy, ignore_errors=True)

        with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is a pytest subprocess
            results = dict(pool.map(run, [None, *make_assignment.TOPICS]))
    outcomes = results.pop(None)
    failed = sorted(t for t, o in outcomes.items() if o == "failed")
    if failed:
        raise RuntimeError(f"the reference fails {len(failed)} tests, e.g. {failed[:3]}: fix them first")
    log(f"reference: {len(outcomes)} tests, all pass")
    needs = {test: [] for test in outcomes}
    for topic, result in results.items():
        if set(result) != set(outcomes):
            raise RuntimeError(f"blanking {topic} changed which tests exist: "
                               f"{sorted(set(result) ^ set(outcomes))[:5]}")
        for test in [t for t, o in result.items() if o == "failed"]:
            needs[test].append(topic)
        log(f"{topic}: {sum(topic in t for t in needs.values())} tests fail when it is blanked")
    return needs


def update_topic_map(tests=(), root=ROOT, log=print, jobs=None):
    """Re-measure the topic map of `root` (all of it, or only `tests`: files or test ids, merged
    into the stored map) and drop entries for tests that no longer exist. Returns the map."""
    import make_assignment  # it imports this module
    measured = measure_topic_map(root, log, tests, jobs)
    collected = collect_tests(root)
    if collected is None:
        raise RuntimeError("pytest could not collect the tests; run `pytest --collect-only` to see why")
    stored = load_topic_map(root) if tests and (Path(root) / TOPIC_MAP).is_file() else {}
    needs = {t: measured.get(t, stored.get(t)) for t in collected if t in measured or t in stored}
    missing = [t for t in collected if t not in needs]
    if missing:
        log(f"warning: {len(missing)} tests are not measured yet, e.g. {missing[0]}: run without test ids")
    write_topic_map(needs, make_assignment.TOPICS, Path(root) / TOPIC_MAP)
    return needs


def collect_tests(repo):
    """The ids of the tests the default run of `repo` would run (without running them), or None."""
    proc = _pytest(repo, ["-q", "--collect-only"])
    if proc.returncode != 0:
        return None  # e.g. pytest is not installed: nothing to compare
    return [line for line in proc.stdout.splitlines() if "::" in line]


def load_topic_map(repo):
    """{test id: [topics]} from tests/assignment_topics.json of `repo`."""
    path = Path(repo) / TOPIC_MAP
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; make it with: "
                                "python scripts/make_assignment.py --update-map")
    with open(path) as f:
        return json.load(f)["tests"]


def write_topic_map(needs, topics, path):
    """Write the topic map, one test per line so that a diff shows which tests changed."""
    lines = [f"  {json.dumps(test)}: {json.dumps(t)}" for test, t in needs.items()]
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write('{\n  "about": "for each test of the default suite, the assignment topics whose solution '
                'regions it needs (it fails when they are blanked); measured by '
                'python scripts/make_assignment.py --update-map",\n')
        f.write(f'  "topics": {json.dumps(list(topics))},\n  "tests": {{\n')
        f.write(",\n".join("  " + line for line in lines) + "\n  }\n}\n")
    os.replace(tmp, path)
