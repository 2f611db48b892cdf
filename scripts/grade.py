"""Grade a copy of minivae as a rubric: a score for each assigned topic, from the tests it is for.

    python scripts/grade.py --explain                        # in a student copy: what to fix first
    python scripts/grade.py --copy ../submissions/ada --json runs/grades/ada.json --topics all

Each test counts for ONE topic, the one it is for: the topic its file marks it with
(`pytestmark = pytest.mark.engine`), or else the last, in teaching order, of the topics it needs
in the topic map (tests/assignment_topics.json, measured by scripts/make_assignment.py); the
earlier ones are what it builds on. `pytest -m engine` runs exactly the tests graded for engine.

Only the copy's assigned topics are scored (its tests/assignment.json; every topic in the
reference, or with --topics all), and by default only their tests run (not the end-to-end runs
of whole scripts, END_TO_END in scripts/assignment_lib.py), in --jobs pytest processes at once
(docs/guide.md gives the time a full copy takes); --quick runs only each region's primary test (seconds); --full runs the whole
default suite, with the tests for no topic, which must pass in every copy (a failure there means code outside the regions was changed). A failing test
that also needs another topic which is not done yet -- a region still blank, or a test needing
that topic alone failing -- is "blocked": it does not count against its own topic, so an
unfinished engine does not lower the score of ops. A topic's score is passed / (tests - skipped -
blocked). "regions written" counts the topic's regions no longer holding their stub.

First the copy's minivae is imported, module by module: a file that does not import (a syntax
error) is the one problem reported, "minivae/schedules.py line 12: SyntaxError: ...", charged to
the topics with regions in that file; the others are not graded until it is fixed. --explain
shows, for each failing topic, the primary test (scripts/assignment_lib.py: PRIMARY) of its
first region that fails, whose message says in words what is wrong, or else its failing test that
needs the fewest topics. Nothing is written into the copy (no caches). Exit status: 0 if every
test that ran passed, 1 otherwise.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import make_assignment
from make_assignment import TOPICS

lib = make_assignment.lib


def topic_for(test, needs, marked=None):
    """The topic a test is graded under: its marker, else the last topic it needs, else None."""
    if marked and marked.get(test):
        return marked[test]
    wanted = lib.needs_of(test, needs, TOPICS) or []
    return max(wanted, key=list(TOPICS).index) if wanted else None


def score(outcomes, needs, marked=None, written=None, topics=None):
    """{topic: {"tests", "passed", "failed", "skipped", "blocked", "waits_for", "failing"}} for the
    given topics (default all), plus "(no topic)", "(other topics)" and "(not in the topic map)".

    A test in the map that did not run (its file failed to import) counts as failed.
    """
    topics = list(TOPICS) if topics is None else list(topics)
    tests = set(outcomes) | set(needs)
    result = {t: outcomes.get(t, "failed") for t in tests}
    alone = {u: [t for t in tests if needs.get(t) == [u]] for u in TOPICS}
    done = {u: (written is None or written[u][0] == written[u][1])
            and all(result[t] != "failed" for t in alone[u]) for u in TOPICS}
    groups = {name: [] for name in [*topics, "(no topic)", "(other topics)", "(not in the topic map)"]}
    for t in sorted(tests):
        u = topic_for(t, needs, marked)
        name = (u if u in topics else "(other topics)") if u else (
            "(no topic)" if t in needs else "(not in the topic map)")
        groups[name].append(t)
    rows = {}
    for name, group in groups.items():
        failing = [t for t in group if result[t] == "failed"]
        waits = {t: [u for u in needs.get(t, []) if u != name and not done[u]] for t in failing}
        rows[name] = {"tests": len(group), "passed": sum(result[t] == "passed" for t in group),
                      "failed": len(failing), "skipped": sum(result[t] == "skipped" for t in group),
                      "blocked": sum(bool(w) for w in waits.values()),
                      "waits_for": [u for u in TOPICS if any(u in w for w in waits.values())],
                      "failing": failing}
    return rows


def report(rows, written=None):
    """The score table as text."""
    lines = [f"{'topic':24s}{'score':>6s}{'passed':>9s} / counted  {'blocked':>7s}  "
             f"{'regions written':>15s}  waits for"]
    for name, row in rows.items():
        if row["tests"] == 0 and name.startswith("("):
            continue
        counted = row["tests"] - row["skipped"] - row["blocked"]
        pct = f"{100 * row['passed'] / counted:.0f}%" if counted else "-"
        done = f"{written[name][0]} / {written[name][1]}" if written and name in written else ""
        lines.append(f"{name:24s}{pct:>6s}{row['passed']:>9d} / {counted:<7d}  {row['blocked'] or '':>7}  "
                     f"{done:>15s}  {', '.join(row['waits_for'])}".rstrip())
    return "\n".join(lines)


def first_failure(name, failing, needs, order, where):
    """(test, region) that --explain shows first for a topic: the primary test of its first
    region (in PRIMARY's order) that fails, else (its failing test needing the fewest topics,
    first in collection order; None). where: {"file:where" of a region: its topic}."""
    for region, test in lib.PRIMARY.items():
        hits = [t for t in lib.primary_tests(test, order) if t in failing]
        if where.get(region) == name and hits:
            return hits[0], region
    position = {t: i for i, t in enumerate(order)}
    return min(failing, key=lambda t: (len(needs.get(t, [])), position.get(t, len(order)), t)), None


def explain(rows, needs, record, topics, where):
    """Per failing topic: the failing test to look at first (not blocked), and its message."""
    lines, order = [], list(record["outcomes"])
    for name in [*topics, "(no topic)"]:
        row = rows.get(name)
        if not row or not row["failing"]:
            continue
        own = [t for t in row["failing"] if not [u for u in needs.get(t, []) if u in row["waits_for"]]]
        test, region = first_failure(name, own or row["failing"], needs, order, where)
        head = f"{name}: {len(row['failing'])} failing" + (
            f" ({row['blocked']} wait for {', '.join(row['waits_for'])})" if row["blocked"] else "")
        about = f"   (the test for {region.replace(':', ': ', 1)})" if region else ""
        lines += [head, f"  first: pytest '{test}'{about}"]
        lines += [f"    {line}" for line in record.get("details", {}).get(test, [])[:8]]
    return "\n".join(lines)


def broken_package(problem, topics, copy):
    """The report for a copy whose minivae does not import: the error, and what it blocks."""
    regions = [r for r in make_assignment.all_regions(copy) if r.path == problem["path"]]
    charged = [t for t in topics if any(r.topic == t for r in regions)]
    at = f" line {problem['line']}" if problem.get("line") else ""
    lines = [f"{problem['path']}{at}: {problem['error']}: {problem['message']}",
             "This is the one problem: minivae does not import, so no test can run. Fix it first.",
             f"{'topic':24s}{'score':>6s}"]
    for t in topics:
        lines.append(f"{t:24s}{'0%' if t in charged else '-':>6s}  " + (
            f"its regions are in {problem['path']}" if t in charged else "not graded until minivae imports"))
    if not charged:
        lines.append(f"{problem['path']} holds no region of these topics: undo the change made there.")
    return "\n".join(lines), charged


def regions_written(repo):
    """{topic: (regions written, regions)}: a region is written once its stub has been replaced."""
    done = {topic: [0, 0] for topic in TOPICS}
    for f in make_assignment.source_files(repo):
        lines = make_assignment._read_lines(Path(repo) / f)
        for r in make_assignment.find_regions(lines, f):
            done[r.topic][1] += 1
            done[r.topic][0] += not make_assignment.is_stub(lines, r)
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the repository to grade (default: the one this script is in)")
    parser.add_argument("--topics", nargs="+", metavar="TOPIC",
                        help="score these topics ('all': every one); default: the copy's assigned topics")
    parser.add_argument("--explain", action="store_true",
                        help="for each failing topic, show the failing test to look at first, and its message")
    parser.add_argument("--full", action="store_true",
                        help="run the whole default test suite, not only the tests of the topics scored")
    parser.add_argument("--quick", action="store_true",
                        help="run only the primary test of each region of the topics scored (seconds)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="pytest processes at once (default: 2, or 1 on a single core)")
    parser.add_argument("--json", type=Path, help="also write the scores and each test's outcome here")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="give up after this many seconds (an endless loop in the code under test)")
    args = parser.parse_args(argv)
    if not (args.copy / "minivae").is_dir() or not (args.copy / "tests").is_dir():
        parser.error(f"{args.copy} is not a copy of minivae (it needs minivae/ and tests/)")
    assigned = lib.read_record(args.copy)
    topics = assigned["topics"] if assigned else list(TOPICS)
    if args.topics:
        topics = list(TOPICS) if args.topics == ["all"] else args.topics
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        parser.error(f"unknown topic(s) {unknown}; choose from {list(TOPICS)}")
    try:
        needs = make_assignment.load_topic_map(args.copy)
    except FileNotFoundError as err:
        parser.error(str(err))
    print(f"minivae assignment: {args.copy.resolve()}  (topics {', '.join(topics)})")

    problem = lib.import_problem(args.copy)
    if problem:
        text, charged = broken_package(problem, topics, args.copy)
        print(text)
        if args.json:
            _write_json(args.json, {"copy": str(args.copy.resolve()), "import_problem": problem,
                                    "charged": charged, "not_graded": [t for t in topics if t not in charged]})
        return 1
    left_out = assigned["left_out"] if assigned else []  # files, and tests about them, not in the copy
    needs = {t: n for t, n in needs.items()
             if (args.copy / t.split("::")[0]).is_file() and not any(f in t for f in left_out)}
    chosen = None if args.full else [t for t in needs if topic_for(t, needs) in topics
                                     and t.split("::")[0] not in lib.END_TO_END]
    if args.quick:
        primaries = [lib.PRIMARY[f"{r.path}:{r.where}"] for r in make_assignment.all_regions(args.copy)
                     if r.topic in topics and f"{r.path}:{r.where}" in lib.PRIMARY]
        chosen = [t for name in primaries for t in lib.primary_tests(name, list(needs))]
    start = time.perf_counter()
    if chosen is None:
        record = make_assignment.run_tests(args.copy, timeout=args.timeout, everything=True)
    else:
        record = lib.run_selected(args.copy, chosen, args.jobs, timeout=args.timeout)
    outcomes, messages = record["outcomes"], record["messages"]
    broken = sorted(f for f in messages if "::" not in f)  # test files that failed to import
    expected = set(needs) if chosen is None else set(chosen)
    missing = sorted(t for t in expected - set(outcomes) if t.split("::")[0] in broken)
    gone = sorted(t for t in expected - set(outcomes) if t.split("::")[0] not in broken)
    graded = {t: n for t, n in needs.items() if t in outcomes or t in missing}
    graded.update({t: lib.needs_of(t, needs, TOPICS) for t in outcomes
                   if t not in graded and lib.needs_of(t, needs, TOPICS) is not None})
    written = regions_written(args.copy)
    rows = score(outcomes, graded, record.get("topics"), written, topics)
    print(f"{len(outcomes)} tests ran in {time.perf_counter() - start:.0f} s" + (
        " (each region's primary test; without --quick all the scored topics' tests)" if args.quick else
        "" if chosen is None else " (the scored topics' tests but the end-to-end script runs; --full runs "
        "every test)"))
    print(report(rows, written))
    print("(each test counts for the topic it is for; 'blocked': failing tests that wait for an unfinished "
          "topic listed under 'waits for', not counted)")
    if missing:
        print(f"{len(missing)} tests did not run; {broken[0]} failed to import: {messages[broken[0]]}")
    if gone or rows["(not in the topic map)"]["tests"]:
        print(f"The topic map is out of date ({len(gone)} of its tests no longer exist, "
              f"{rows['(not in the topic map)']['tests']} tests are not in it): "
              "python scripts/make_assignment.py --update-map (on the reference) re-measures it.")
    if args.explain:
        where = {f"{r.path}:{r.where}": r.topic for r in make_assignment.all_regions(args.copy)}
        print("\n" + (explain(rows, graded, record, topics, where) or "nothing fails"))
    if args.json:
        _write_json(args.json, {"copy": str(args.copy.resolve()), "topics": rows, "outcomes": outcomes,
                                "durations": record.get("durations", {})})
    failed = sum(o == "failed" for o in outcomes.values()) + len(missing)
    return 1 if failed else 0


def _write_json(path, data):
    """Written without minivae.fileio: the graded copy's package need not import."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
