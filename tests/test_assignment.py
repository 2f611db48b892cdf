"""Assignment copies fail exactly by topic, and pass again with the solutions put back.

scripts/make_assignment.py blanks solution regions; tests/assignment_topics.json says which tests
need which topic; scripts/grade.py scores a copy by topic. The default run checks the regions
are where the assignment puts them, that a copy differs from the reference only inside them and
restores byte for byte, and -- in copies with one topic blanked at a time -- that a sample of
that topic's tests fails and a sample of the other tests passes. `pytest -m slow` runs the whole
suite per topic: (a) the reference passes everything, (b) blanking a topic fails exactly its
tests in the map, and each region alone fails at least one, (c) a fully blank copy with the
solutions restored passes everything.
These tests never run inside a copy (scripts run the suite with this file left out).
"""
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
spec = importlib.util.spec_from_file_location("make_assignment", ROOT / "scripts" / "make_assignment.py")
make_assignment = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_assignment)
sys.modules.setdefault("make_assignment", make_assignment)  # grade.py imports it by name
spec = importlib.util.spec_from_file_location("grade", ROOT / "scripts" / "grade.py")
grade = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grade)

TOPICS = make_assignment.TOPICS
REGIONS = make_assignment.all_regions(ROOT)
IS_COPY = any(make_assignment.is_stub(make_assignment._read_lines(ROOT / r.path), r) for r in REGIONS)
pytestmark = [
    pytest.mark.skipif(bool(os.environ.get("MINIVAE_ASSIGNMENT_CHILD")), reason="never inside a copy"),
    pytest.mark.skipif(IS_COPY, reason="a student copy: these tests need the reference solutions"),
]

# The pieces a student writes, by topic: where each region must be (enclosing function, or the
# module-level VJP registration). A marker lost in an edit fails here.
EXPECTED = {
    "engine": {"Tensor.backward", "_topological_order", "unbroadcast"},
    "ops": {"multiply.defvjp", "divide.defvjp", "exp.defvjp", "log.defvjp", "tanh.defvjp",
            "sigmoid.defvjp", "_matmul_vjp_x", "_matmul_vjp_y", "sum.defvjp", "_logsumexp_vjp"},
    "distributions": {"sample_gaussian", "kl_standard_normal_per_dim", "bernoulli_log_likelihood"},
    "free_bits": {"free_bits_kl"},
    "schedules": {"cyclical"},
    "optim": {"Adam.step"},
    "gru": {"GRUCell.step"},
    "iwae": {"log_mean_exp", "_log_weights", "iw_objective"},
}
MAX_REGION_LINES = 35   # short enough that the student file still reads well
MAX_HINT_CHARS = 90     # one line
HOME = {"engine": "test_engine.py", "ops": "test_ops.py", "distributions": "test_vae_math.py",
        "free_bits": "test_vae_math.py", "schedules": "test_schedules.py", "optim": "test_optim.py",
        "gru": "test_layers.py", "iwae": "test_vae_math.py"}  # the test file each topic is mostly about
# Kept out of the default run's samples: tests that take seconds, or files slow to import
# (matplotlib, torch). The slow test runs everything.
SLOW = ("test_train_mnist.py", "test_benchmark.py", "test_collapse_study.py", "test_plot.py",
        "deep_chain", "matches_torch")


def _tree(root):
    """{relative path: bytes} of every file a copy should hold."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
            and not any(make_assignment._excluded(part) for part in p.relative_to(root).parts)}


def _outside_regions(lines, path):
    inside = {i for r in make_assignment.find_regions(lines, path) for i in range(r.begin + 1, r.end)}
    return [line for i, line in enumerate(lines) if i not in inside]


def test_regions_are_where_issue_7_puts_them():
    found = {topic: {r.where for r in REGIONS if r.topic == topic} for topic in TOPICS}
    assert found == EXPECTED
    for r in REGIONS:
        assert r.end - r.begin - 1 <= MAX_REGION_LINES, f"{r.path}:{r.begin + 1} region is too long"
        assert len(r.hint) <= MAX_HINT_CHARS, f"{r.path}:{r.begin + 1} hint is longer than one line"


@pytest.mark.parametrize("text, problem", [
    ("def f():\n    # BEGIN SOLUTION engine: h\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    # END SOLUTION\n", "without a BEGIN"),
    ("def f():\n    # BEGIN SOLUTION enigne: h\n    return 1\n    # END SOLUTION\n", "unknown topic"),
    ("def f():\n    # BEGIN SOLUTION engine: h\n    # BEGIN SOLUTION ops: h\n", "cannot nest"),
    ("def f():\n    # BEGIN SOLUTION engine: h\n    return 1\n# END SOLUTION\n", "not indented like"),
    ("def f():\n    # BEGIN SOLUTION engine: h\n    # a comment\n    # END SOLUTION\n    return 1\n",
     "no code"),
    ("def f():\n    # BEGIN SOLUTION engine hint without a colon\n    return 1\n", "malformed marker"),
    ("# BEGIN SOLUTION ops: h\ndef f():\n    return 1\n# END SOLUTION\n", "only VJP registrations"),
])
def test_malformed_regions_are_reported_with_file_and_line(text, problem):
    lines = text.splitlines(keepends=True)
    with pytest.raises(ValueError, match=problem) as err:
        make_assignment.blank_lines(lines, "minivae/x.py", lambda r: True)
    assert "minivae/x.py:" in str(err.value)


def test_stubs_raise_in_functions_and_are_comments_at_module_level():
    text = ("@primitive\ndef cube(x):\n    return x ** 3\n# BEGIN SOLUTION ops: e**x\n"
            "cube.defvjp(lambda g, ans, x: 3 * g * x * x)\n# END SOLUTION\n\n\ndef f(x):\n    y = 2 * x\n"
            "    # BEGIN SOLUTION engine: say \"twice\"\n    y = y + 1\n    return y\n    # END SOLUTION\n")
    out = "".join(make_assignment.blank_lines(text.splitlines(keepends=True), "m.py", lambda r: True))
    assert "# BEGIN SOLUTION ops: e**x\n# TODO(ops): e**x\n# END SOLUTION\n" in out
    assert "    raise NotImplementedError('engine: say \"twice\"')\n    # END SOLUTION\n" in out
    assert "defvjp" not in out and "y + 1" not in out


def test_regions_are_found_in_a_file_with_a_syntax_error():
    """grade.py must still count a student's regions when their file does not parse."""
    text = ("def f(x):\n    # BEGIN SOLUTION engine: h\n    return (x\n    # END SOLUTION\n\n\n"
            "# BEGIN SOLUTION ops: v\n# TODO(ops): v\n# END SOLUTION\n")
    lines = text.splitlines(keepends=True)
    regions = make_assignment.find_regions(lines, "m.py")
    assert [(r.topic, r.in_function, make_assignment.is_stub(lines, r)) for r in regions] == [
        ("engine", True, False), ("ops", False, True)]


STUDENT_FILES = {"ASSIGNMENT.md", make_assignment.lib.RECORD}  # what a student copy adds
CHANGED = {"README.md", make_assignment.lib.STUB_SCRIPT,    # ... and changes outside the regions
           *(path for path, *_ in make_assignment.lib.SPEED_CODE.values())}


def test_copy_changes_only_the_regions_and_restore_gives_the_reference_back(tmp_path):
    blanked = make_assignment.make_assignment(tmp_path / "student")
    assert {(r.path, r.begin) for r in blanked} == {(r.path, r.begin) for r in REGIONS}
    ref, copy = _tree(ROOT), _tree(tmp_path / "student")
    ref = {p: b for p, b in ref.items() if not p.startswith(make_assignment.lib.GRADER + "/")}
    left_out = set(make_assignment.LEFT_OUT)
    assert set(copy) == set(ref) - left_out | STUDENT_FILES
    ref = {p: b for p, b in ref.items() if p not in left_out}
    for name in ("README.md", "setup.cfg", "pyproject.toml", ".ci/run", "docs/guide.md",
                 make_assignment.TOPIC_MAP, "scripts/grade.py", "minivae/bundled/README.md"):
        assert name in copy
    assert not any(p.startswith(("runs/", ".git/")) or "__pycache__" in p for p in copy)
    changed = {p for p in ref if ref[p] != copy[p]}
    assert changed == {r.path for r in REGIONS} | CHANGED
    for path in changed - CHANGED:  # same lines outside the regions, but for VJP formulas; inside, the stub
        lines = make_assignment._read_lines(tmp_path / "student" / path)
        regions = make_assignment.find_regions(lines, path)
        assert regions and all(make_assignment.is_stub(lines, r) for r in regions)
        reference = make_assignment._read_lines(ROOT / path)
        edits = make_assignment.lib.vjp_docstring_edits(reference, make_assignment.find_regions(reference, path))
        assert bool(edits) == (path == "minivae/ops.py")
        reference = [edits.get(i, line) for i, line in enumerate(reference)]
        assert _outside_regions(lines, path) == _outside_regions(reference, path)
    assert grade.regions_written(tmp_path / "student") == {
        t: [0, sum(r.topic == t for r in REGIONS)] for t in TOPICS}
    assert [r.where for r in make_assignment.all_regions(tmp_path / "student")] == [r.where for r in REGIONS]

    restored = make_assignment.restore(tmp_path / "student", ["gru"])
    assert {r.topic for r in restored} == {"gru"}
    assert grade.regions_written(tmp_path / "student")["gru"][0] == 1
    make_assignment.restore(tmp_path / "student")
    restored = _tree(tmp_path / "student")
    assert {p: b for p, b in restored.items() if p not in STUDENT_FILES | CHANGED} == {
        p: b for p, b in ref.items() if p not in CHANGED}
    for path, *_ in make_assignment.lib.SPEED_CODE.values():  # the speed code is back as it was
        assert restored[path] == ref[path]


def test_blanked_ops_lose_their_vjp_formula_but_keep_the_forwards_meaning(tmp_path):
    make_assignment.make_assignment(tmp_path / "hw", ["ops"])
    text = (tmp_path / "hw" / "minivae" / "ops.py").read_text()
    assert '"""x * y.  VJP: yours to derive (ops)."""' in text
    assert "VJP: g*y and g*x" not in text and "g * softmax(x) = g * exp(x - ans)" not in text
    assert '"""x + y.  VJP: g for both inputs."""' in text  # ops the student does not write keep theirs
    make_assignment.restore(tmp_path / "hw", select=lambda r: r.where == "multiply.defvjp")
    text = (tmp_path / "hw" / "minivae" / "ops.py").read_text()
    assert '"""x * y.  VJP: g*y and g*x."""' in text and "VJP: yours to derive (ops)." in text


def test_no_solution_line_is_left_anywhere_in_a_copy(tmp_path):
    """Every distinctive line of every blanked region (one holding arithmetic; spaces and module
    prefixes such as np. and ops. removed) is searched for in every text file of a fully blanked
    copy -- the package, scripts, tests and docs: none may be there, except where the region's own
    file states it as the formula to implement. The worked solutions tests compare against live
    in grader/, which copies leave out."""
    wanted = {line: r for r in REGIONS
              for line in make_assignment.lib.solution_lines(make_assignment._read_lines(ROOT / r.path), r)}
    make_assignment.make_assignment(tmp_path / "hw")
    assert not (tmp_path / "hw" / make_assignment.lib.GRADER).exists()
    leaks = make_assignment.lib.find_leaks(tmp_path / "hw", wanted)
    assert not leaks, [(f, wanted[line].path, wanted[line].where, line) for f, line in leaks]
    fused = (tmp_path / "hw" / "minivae" / "fused.py").read_text()
    assert "_gru_sequence_vjp" in fused and "GRUCell.step(cell" in fused and "np.tanh(a[" not in fused
    plain = tmp_path / "plain"  # the search itself works: without blanking, it finds every region
    make_assignment.make_assignment(plain, select=lambda r: True, student=False)
    make_assignment.restore(plain)
    found = {line for f, line in make_assignment.lib.find_leaks(plain, wanted)}
    assert found == set(wanted) - make_assignment.lib.specified(plain, wanted) and len(found) > 20


def test_a_student_copy_says_what_was_assigned_and_how_to_test_it(tmp_path):
    make_assignment.make_assignment(tmp_path / "hw", ["engine", "ops"])
    record = make_assignment.lib.read_record(tmp_path / "hw")
    assert record["topics"] == ["engine", "ops"] and "tests/test_benchmark.py" in record["left_out"]
    text = (tmp_path / "hw" / "ASSIGNMENT.md").read_text()
    assert text.index("## 1. engine") < text.index("## 2. ops") and "## 3." not in text
    for needed in ("pytest -m engine", "pytest -m ops", "python scripts/grade.py --explain",
                   "`minivae/engine.py`, line", "_topological_order", "python scripts/labs.py graph"):
        assert needed in text
    assert (tmp_path / "hw" / "README.md").read_text().startswith("> **A student copy.**")
    assert not (tmp_path / "hw" / "scripts" / "bench" / "bench_numpy.py").exists()
    assert make_assignment.lib.read_record(ROOT) is None  # the reference is no copy


def test_copy_refuses_an_existing_folder_and_a_folder_inside_the_repository(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        make_assignment.make_assignment(tmp_path / "full")
    with pytest.raises(ValueError, match="inside the repository"):
        make_assignment.make_assignment(ROOT / "docs" / "student")
    with pytest.raises(SystemExit):
        make_assignment.main(["--out", str(tmp_path / "s"), "--only", "enigne"])
    assert not (tmp_path / "s").exists() and not (ROOT / "docs" / "student").exists()


def test_topic_map_names_every_topic_and_only_known_tests():
    needs = make_assignment.load_topic_map(ROOT)
    for topic in TOPICS:
        assert any(topic in n for n in needs.values()), f"no test needs topic {topic}"
    assert all(set(n) <= set(TOPICS) for n in needs.values())
    assert not any(t.startswith(make_assignment.ASSIGNMENT_TEST) for t in needs)
    assert any(not n for n in needs.values())  # tests in no topic: they must pass in any copy


def test_grade_counts_each_test_for_one_topic_and_blocks_tests_waiting_for_another():
    needs = {"a": ["engine"], "b": ["engine", "gru"], "c": [], "d": ["gru", "engine"], "e": ["engine"],
             "f": ["engine", "ops"], "g": ["gru"]}
    outcomes = {"a": "passed", "b": "failed", "c": "passed", "e": "failed", "f": "failed", "g": "failed",
                "new": "passed"}  # d did not run; e needs the engine alone and fails: the engine is not done
    marked = {"f": "engine"}  # a marker in the test file wins over the map
    rows = grade.score(outcomes, needs, marked)
    assert (rows["engine"]["tests"], rows["engine"]["passed"], rows["engine"]["blocked"]) == (3, 1, 0)
    assert (rows["gru"]["tests"], rows["gru"]["failed"]) == (3, 3)  # b, d and g: gru is the last they need
    assert rows["gru"]["blocked"] == 2 and rows["gru"]["waits_for"] == ["engine"]  # b and d; g needs gru alone
    assert (rows["(no topic)"]["passed"], rows["(not in the topic map)"]["tests"]) == (1, 1)
    only = grade.score(outcomes, needs, marked, topics=["gru"])
    assert "engine" not in only and only["(other topics)"]["tests"] == 3
    table = grade.report(rows)
    assert "engine" in table and "33%" in table and "schedules" in table
    written = {t: [1, 1] for t in TOPICS}
    written["engine"] = [0, 3]
    assert grade.score({**outcomes, "e": "passed"}, needs, marked)["gru"]["blocked"] == 0
    assert grade.score({**outcomes, "e": "passed"}, needs, marked, written)["gru"]["waits_for"] == ["engine"]


def test_pytest_markers_select_the_tests_a_topic_is_graded_by():
    proc = make_assignment.lib._pytest(ROOT, ["-q", "--collect-only", "-m", "engine",
                                             "tests/test_engine.py", "tests/test_vjps.py"])
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert ids and all(t.startswith("tests/test_engine.py::") for t in ids)
    assert any("negative_control" in t for t in ids)


def test_writing_one_region_moves_its_score(tmp_path):
    """In a copy with the engine blank, writing _topological_order alone passes its own tests."""
    copy = tmp_path / "hw"
    make_assignment.make_assignment(copy, ["engine"])
    args = ["tests/test_engine.py", "-k", "not deep_chain"]
    before = make_assignment.run_tests(copy, args, everything=True)
    make_assignment.restore(copy, select=lambda r: r.where == "_topological_order")
    after = make_assignment.run_tests(copy, args, everything=True)
    assert grade.regions_written(copy)["engine"] == [1, 3]
    passed = [grade.score(r["outcomes"], {}, r["topics"])["engine"]["passed"] for r in (before, after)]
    assert passed[1] > passed[0]
    assert after["outcomes"]["tests/test_engine.py::test_topological_order_puts_parents_first_and_each_node_once"] == "passed"
    assert before["outcomes"]["tests/test_engine.py::test_topological_order_puts_parents_first_and_each_node_once"] == "failed"


def _plant(copy, key, body):
    """Replace the body of the region "file:where" in the copy with `body`."""
    path, where = key.split(":")
    lines = make_assignment._read_lines(Path(copy) / path)
    (region,) = [r for r in make_assignment.find_regions(lines, path) if r.where == where]
    lines[region.begin + 1:region.end] = [body]
    (Path(copy) / path).write_text("".join(lines))


def _first_failure(text, topic):
    """The lines --explain prints for `topic`: its header, the test shown first and its message."""
    block = text.split(f"\n{topic}: ", 1)[1].split("\n\n")[0]
    return [line for line in block.splitlines() if line.startswith("    ") or "first:" in line]


STALE = ("the topic map is out of date: re-measure it with `python scripts/make_assignment.py "
         "--update-map` (docs/guide.md, 'The topic map', says how long it takes)")


def test_the_topic_map_lists_exactly_the_tests_of_the_default_suite():
    """No phantom entries (tests that no longer exist) and no test outside the map."""
    collected = make_assignment.collect_tests(ROOT)
    stored = make_assignment.load_topic_map(ROOT)
    added, gone = [t for t in collected if t not in stored], [t for t in stored if t not in collected]
    assert not added and not gone, f"{STALE}: {len(added)} tests not in it (e.g. {added[:3]}), " \
                                   f"{len(gone)} entries for tests that no longer exist (e.g. {gone[:3]})"


def test_every_region_names_a_primary_test_that_exists():
    """grade.py --explain shows a region's primary test first: each region has one, in the map."""
    primary, needs = make_assignment.lib.PRIMARY, make_assignment.load_topic_map(ROOT)
    assert set(primary) == {f"{r.path}:{r.where}" for r in REGIONS}
    for region, name in primary.items():
        tests = make_assignment.lib.primary_tests(name, list(needs))
        assert tests, f"{region}: its primary test {name} is not in the topic map"
        topic = next(r.topic for r in REGIONS if f"{r.path}:{r.where}" == region)
        assert all(grade.topic_for(t, needs) in (topic, None) for t in tests), (region, tests)


def test_a_correct_student_scores_every_topic_at_100_percent(tmp_path, capsys):
    """Every topic blanked, then refilled from the reference: graded, it exits 0 (--quick: the
    primary tests; the slow test below grades it in full)."""
    copy = tmp_path / "student"
    make_assignment.make_assignment(copy)
    make_assignment.restore(copy)
    code = grade.main(["--copy", str(copy), "--quick", "--json", str(tmp_path / "grade.json")])
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "grade.json").read_text())["topics"]
    assert code == 0, out
    for topic in TOPICS:
        assert rows[topic]["tests"] > 0 and rows[topic]["passed"] == rows[topic]["tests"], (topic, out)
    assert not rows["(not in the topic map)"]["tests"] and "out of date" not in out, out
    assert not [p for p in copy.rglob("*") if p.name in (".hypothesis", "__pycache__", ".pytest_cache")]


def test_a_syntax_error_is_the_one_problem_named_with_its_file_and_line(tmp_path, capsys):
    copy = tmp_path / "student"
    make_assignment.make_assignment(copy, ["engine", "schedules"])
    make_assignment.restore(copy)
    lines = make_assignment._read_lines(copy / "minivae" / "schedules.py")
    (region,) = make_assignment.find_regions(lines, "minivae/schedules.py")
    lines[region.begin + 1] = lines[region.begin + 1].rstrip("\n") + " (\n"  # an unclosed bracket
    (copy / "minivae" / "schedules.py").write_text("".join(lines))
    assert grade.main(["--copy", str(copy), "--json", str(tmp_path / "grade.json")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"minivae/schedules.py line {region.begin + 2}: SyntaxError: '(' was never closed", out
    assert "This is the one problem" in out[2]
    assert [line.split()[:2] for line in out[4:6]] == [["engine", "-"], ["schedules", "0%"]], out
    assert "not graded until minivae imports" in out[4] and "(no topic)" not in "\n".join(out)
    record = json.loads((tmp_path / "grade.json").read_text())
    assert record["charged"] == ["schedules"] and record["not_graded"] == ["engine"]
    assert not [p for p in copy.rglob("*") if p.name in (".hypothesis", "__pycache__", ".pytest_cache")]


MISTAKES = make_assignment.lib.GRADER_DIR / "mistakes.py"


def _mistakes():
    spec = importlib.util.spec_from_file_location("mistakes", MISTAKES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MISTAKES


def _graded_mistake(tmp_path, capsys, name, *flags):
    key, body, topic, phrases = _mistakes()[name]
    copy = tmp_path / "student"
    make_assignment.make_assignment(copy, [topic])
    make_assignment.restore(copy)
    _plant(copy, key, body)
    code = grade.main(["--copy", str(copy), "--explain", "--json", str(tmp_path / "grade.json"), *flags])
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "grade.json").read_text())["topics"]
    assert code == 1 and rows[topic]["failed"] > 0 and not rows[topic]["blocked"], out
    first = _first_failure(out, topic)
    assert key.replace(":", ": ") in first[0], out  # the region's own primary test is shown first
    for phrase in phrases:
        assert phrase in "\n".join(first), out
    return first


@pytest.mark.parametrize("name", list(_mistakes()))
def test_a_planted_mistake_is_named_in_words_under_its_own_topic(name, tmp_path, capsys):
    _graded_mistake(tmp_path, capsys, name, "--quick")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_mistakes()))
def test_a_planted_mistake_is_named_first_by_a_full_grade(name, tmp_path, capsys):
    first = _graded_mistake(tmp_path, capsys, name)
    with capsys.disabled():
        print(f"\n{name}:\n" + "\n".join(first))


def _spread(items, k):
    """k items spread evenly over the list (all of them if there are at most k)."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _sample(needs, topic):
    """(tests that must fail, tests that must pass) with `topic` blanked: two of its tests in its home
    file and two elsewhere; two tests of the home file that do not need it, a test of each of the
    next two topics that does not need it, and a test in no topic."""
    fast = [t for t in needs if not any(s in t for s in SLOW) and "negative_control" not in t]  # those skip in copies
    home = f"tests/{HOME[topic]}::"
    mine, others = [t for t in fast if topic in needs[t]], [t for t in fast if topic not in needs[t]]
    by_file = {}
    for t in mine:
        if not t.startswith(home):
            by_file.setdefault(t.split("::")[0], []).append(t)
    fail = (_spread([t for t in mine if t.startswith(home)], 2)
            + _spread([tests[len(tests) // 2] for tests in by_file.values()], 2))
    names = list(TOPICS)
    neighbours = [names[(names.index(topic) + i) % len(names)] for i in (1, 2)]
    passing = (_spread([t for t in others if t.startswith(home)], 2)
               + [t for u in neighbours for t in _spread([t for t in others if u in needs[t]], 1)]
               + _spread([t for t in others if not needs[t]], 1))
    return fail, list(dict.fromkeys(passing))


def test_each_topic_fails_its_own_tests_and_no_others_on_a_sample(tmp_path):
    """(b) on a sample, one copy per topic; then a fully blank copy, and (c) restored."""
    needs = make_assignment.load_topic_map(ROOT)
    union_fail, union_pass = [], []
    for topic in TOPICS:
        make_assignment.make_assignment(tmp_path / topic, [topic])
        fail, passing = _sample(needs, topic)
        outcomes = make_assignment.run_tests(tmp_path / topic, fail + passing)
        assert {t for t in fail + passing if outcomes.get(t) != "passed"} == set(fail), topic
        union_fail += fail[:1]
        union_pass += [t for t in passing if not needs[t]]

    blank = tmp_path / "all-topics"
    make_assignment.make_assignment(blank)
    sample = union_fail + list(dict.fromkeys(union_pass))
    outcomes, messages = make_assignment.run_tests(blank, sample, messages=True)
    assert {t for t in sample if outcomes[t] == "failed"} == set(union_fail)
    stubbed = [t for t in union_fail if "NotImplementedError" in messages[t] or "has no VJP" in messages[t]]
    assert stubbed == union_fail, messages  # they fail because of the stubs

    make_assignment.restore(blank)
    outcomes = make_assignment.run_tests(blank, sample)
    assert set(outcomes.values()) == {"passed"}, outcomes


@pytest.mark.slow
def test_whole_suite_fails_exactly_by_topic(tmp_path, capsys):
    """(a), (b) and (c) on the whole default suite; prints the grading of a blank and a restored copy."""
    stored = make_assignment.load_topic_map(ROOT)
    measured = make_assignment.measure_topic_map(ROOT, log=lambda *a: None)   # (a) inside: all pass
    added, removed = sorted(set(measured) - set(stored)), sorted(set(stored) - set(measured))
    assert not added and not removed, f"the topic map is stale: new {added[:5]}, gone {removed[:5]}"
    wrong = {t: (stored[t], measured[t]) for t in measured if stored[t] != measured[t]}
    assert not wrong, f"tests whose topics changed (stored, measured): {dict(list(wrong.items())[:5])}"

    for region in REGIONS:  # every region is tested: blanking it alone fails one of its topic's tests
        key = (region.path, region.begin)
        copy = tmp_path / f"region-{region.path.replace('/', '_')}-{region.begin}"
        make_assignment.make_assignment(copy, select=lambda r: (r.path, r.begin) == key)
        tests = [t for t, n in stored.items() if region.topic in n]
        outcomes = make_assignment.run_tests(copy, tests, extra_args=["-x"])
        shutil.rmtree(copy)
        assert "failed" in outcomes.values(), f"nothing fails without {region.path}:{region.begin + 1}"

    blank = tmp_path / "all-topics"
    make_assignment.make_assignment(blank)
    assert grade.main(["--copy", str(blank), "--full", "--json", str(tmp_path / "blank.json")]) == 1
    outcomes = json.loads((tmp_path / "blank.json").read_text())["outcomes"]
    in_copy = {t: n for t, n in stored.items() if t.split("::")[0] not in make_assignment.LEFT_OUT}
    assert {t for t, o in outcomes.items() if o == "failed"} == {t for t, n in in_copy.items() if n}
    make_assignment.restore(blank)
    assert grade.main(["--copy", str(blank), "--full"]) == 0
    with capsys.disabled():
        print("\n" + capsys.readouterr().out)
