"""Grade a copy of minivae topic by topic: run its test suite and score each assignment topic.

    python scripts/grade.py                                  # this checkout: what a student runs
    python scripts/grade.py --copy ../submissions/ada --json runs/grades/ada.json

A topic's tests are the tests that fail when that topic's solution regions are blanked, as
measured on the reference (tests/assignment_topics.json, see scripts/make_assignment.py); its
score is the share of them that pass. Most tests need more than one topic -- nothing can be
differentiated without the engine -- so "also needs" names the other topics that at least half of
a topic's tests need too: fix those first (topics are listed in the order to do them). "regions
written" counts the topic's regions that no longer hold the NotImplementedError stub. Tests in
no topic must pass in every copy; a failure there means code outside the regions was changed.
Skipped tests (e.g. the PyTorch comparison when torch is not installed) count for no one.
Exit status: 0 if every test passed, 1 otherwise.
"""
import argparse
import sys
import time
from pathlib import Path

import make_assignment  # a sibling script: Python puts this folder on sys.path
from make_assignment import TOPICS


def score(outcomes, needs):
    """Per-topic results: {topic: {"passed", "failed", "skipped", "tests", "also_needs"}}, plus
    "(no topic)" and "(not in the topic map)" rows. A test in the map that did not run (its file
    failed to import) counts as failed."""
    rows = {}
    groups = {topic: [t for t, n in needs.items() if topic in n] for topic in TOPICS}
    groups["(no topic)"] = [t for t, n in needs.items() if not n]
    groups["(not in the topic map)"] = sorted(set(outcomes) - set(needs))
    for name, tests in groups.items():
        results = [outcomes.get(t, "failed") for t in tests]
        also = [u for u in TOPICS if u != name and tests
                and sum(u in needs[t] for t in tests if t in needs) >= len(tests) / 2]
        rows[name] = {"tests": len(tests), "passed": results.count("passed"),
                      "failed": results.count("failed"), "skipped": results.count("skipped"),
                      "also_needs": also}
    return rows


def regions_written(repo):
    """{topic: (regions written, regions)}: a region is written once its stub has been replaced."""
    done = {topic: [0, 0] for topic in TOPICS}
    for f in make_assignment.source_files(repo):
        lines = make_assignment._read_lines(Path(repo) / f)
        for r in make_assignment.find_regions(lines, f):
            done[r.topic][1] += 1
            done[r.topic][0] += not make_assignment.is_stub(lines, r)
    return done


def report(rows, written=None):
    """The score table as text."""
    lines = [f"{'topic':24s}{'score':>6s}{'passed':>9s} / tests  {'skipped':>7s}  "
             f"{'regions written':>15s}  also needs"]
    for name, row in rows.items():
        if row["tests"] == 0 and name.startswith("("):
            continue
        run = row["passed"] + row["failed"]
        pct = f"{100 * row['passed'] / run:.0f}%" if run else "-"
        done = f"{written[name][0]} / {written[name][1]}" if written and name in written else ""
        lines.append(f"{name:24s}{pct:>6s}{row['passed']:>9d} / {row['tests']:<5d}  "
                     f"{row['skipped'] or '':>7}  {done:>15s}  {', '.join(row['also_needs'])}".rstrip())
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the repository to grade (default: the one this script is in)")
    parser.add_argument("--json", type=Path, help="also write the scores and each test's outcome here")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="give up after this many seconds (an endless loop in the code under test)")
    args = parser.parse_args(argv)
    if not (args.copy / "minivae").is_dir() or not (args.copy / "tests").is_dir():
        parser.error(f"{args.copy} is not a copy of minivae (it needs minivae/ and tests/)")

    try:
        needs = make_assignment.load_topic_map(args.copy)
    except FileNotFoundError as err:
        parser.error(str(err))
    start = time.perf_counter()
    outcomes, messages = make_assignment.run_tests(args.copy, timeout=args.timeout, messages=True)
    rows = score(outcomes, needs)
    print(f"minivae assignment: {args.copy.resolve()}  ({len(outcomes)} tests ran in "
          f"{time.perf_counter() - start:.0f} s)")
    print(report(rows, regions_written(args.copy)))
    print("(a topic's tests are those that fail when its regions are blank; 'also needs': topics that "
          "at least half of them need too -- do those first)")
    missing = sorted(set(needs) - set(outcomes))
    if missing:
        broken = sorted(f for f in messages if "::" not in f)  # test files that failed to import
        why = f"{broken[0]} failed to import: {messages[broken[0]]}" if broken else f"e.g. {missing[0]}"
        print(f"{len(missing)} tests did not run; {why}")
    if rows["(not in the topic map)"]["tests"]:
        print("Tests not in the topic map were added after it was measured: "
              "python scripts/make_assignment.py --update-map (on the reference) re-measures it.")
    if args.json:
        from minivae.fileio import write_json
        write_json(args.json, {"copy": str(args.copy.resolve()), "topics": rows, "outcomes": outcomes})
    failed = sum(o == "failed" for o in outcomes.values()) + len(missing)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
