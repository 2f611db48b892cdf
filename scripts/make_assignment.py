"""Make a student copy of minivae with solution regions blanked out, and put solutions back.

    python scripts/make_assignment.py --out ../minivae-student        # every topic blanked
    python scripts/make_assignment.py --out ../hw2 --only gru optim   # just these topics
    python scripts/make_assignment.py --restore ../hw2 --only optim   # the reference Adam back in
    python scripts/make_assignment.py --update-map                    # after changing tests (see docs/guide.md)

Solution regions. In the reference code (minivae/*.py only) a piece worth implementing sits
between two comment lines:

    # BEGIN SOLUTION <topic>: <one-line hint>
    ...reference code...
    # END SOLUTION

Regions are never nested, and END is indented like its BEGIN. In the student copy both marker
lines stay (they show where to write, and let --restore find the region again) and the code
between them becomes one line:
    raise NotImplementedError("<topic>: <hint>")   in a function body;
    # TODO(<topic>): <hint>                        at module level, where a raise would stop the
                                                   module importing. Module-level regions may only
                                                   hold VJP registrations (`exp.defvjp(...)`): an
                                                   op whose VJP is missing still runs forwards, and
                                                   differentiating it raises the engine's
                                                   "primitive 'exp' has no VJP".
Every other byte of the repository is copied unchanged (runs/, .git and caches are left out), so
the copy installs and runs like the original: `pip install -e ".[test]" && pytest`. Its
tests/conftest.py puts the copy's root first on sys.path, so its tests import the copy's
minivae even when the reference is pip-installed.

Topics group regions (TOPICS below, in the order to do them). The topic map,
tests/assignment_topics.json, lists for each test of the default suite the topics it needs:
test X needs topic T if X fails when T's regions alone are blanked. It is measured, not written
by hand: --update-map runs the suite once on the reference and once per topic, one run per core
at a time (scripts/topic_map.py; given test files or ids, only those, merged in). scripts/grade.py
scores each topic by the share of its tests that pass; tests/test_assignment.py checks that
blanking a topic fails exactly that topic's tests (a sample by default, all with -m slow).
"""
import argparse
import ast
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import assignment_lib as lib
from assignment_lib import ASSIGNMENT_TEST, LEFT_OUT, TOPIC_MAP, run_tests  # noqa: F401 (re-exported)
from topic_map import collect_tests, load_topic_map, measure_topic_map, update_topic_map  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]

TOPICS = {  # name -> what the student writes; in the order to do them (later ones need earlier ones)
    "engine": "the backward pass: topological order, unbroadcasting, gradient accumulation (engine.py)",
    "ops": "the VJPs of the core primitives: multiply, divide, exp, log, tanh, sigmoid, matmul, "
           "sum, logsumexp (ops.py)",
    "distributions": "the reparameterised sample, the analytic KL, the Bernoulli log-likelihood "
                     "(distributions.py)",
    "free_bits": "the free-bits floor on the KL, three variants (elbo.py)",
    "schedules": "the cyclical KL-annealing schedule (schedules.py)",
    "optim": "the Adam update (optim.py)",
    "gru": "the GRU cell equations (layers.py)",
    "iwae": "the importance-weighted bound on log p(x) (diagnostics.py)",
}
SOURCE_DIRS = ("minivae",)  # where regions may be; scripts/ and tests/ are copied as they are
EXCLUDED = {".git", "runs", "build", "dist", "__pycache__", ".pytest_cache", ".benchmarks", ".hypothesis",
            ".venv", "venv", ".mypy_cache", ".ruff_cache", ".ipynb_checkpoints"}
EXCLUDED_SUFFIXES = (".pyc", ".egg-info")

BEGIN = re.compile(r"^(?P<indent>[ ]*)# BEGIN SOLUTION (?P<topic>\w+): (?P<hint>\S.*?)\s*$")
END = re.compile(r"^(?P<indent>[ ]*)# END SOLUTION\s*$")


@dataclass(frozen=True)
class Region:
    """One solution region: lines[begin] is its BEGIN marker, lines[end] its END marker."""
    path: str          # relative to the repository root, with forward slashes
    topic: str
    hint: str
    begin: int         # 0-based line indices
    end: int
    indent: str
    where: str         # the enclosing function's qualified name, or the module-level statement
    in_function: bool

    def stub(self):
        """The line that replaces the region's body in the student copy."""
        message = f"{self.topic}: {self.hint}"
        if self.in_function:
            literal = f'"{message}"' if '"' not in message and "\\" not in message else repr(message)
            return f"{self.indent}raise NotImplementedError({literal})\n"
        return f"{self.indent}# TODO({self.topic}): {self.hint}\n"


def _function_spans(tree):
    """(first line, last line, qualified name) of every function, outermost first."""
    spans = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    spans.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")
            else:
                visit(child, prefix)
    visit(tree, "")
    return spans


def find_regions(lines, path):
    """The solution regions of a file given as a list of lines; ValueError on a malformed marker."""
    regions, open_at = [], None
    for i, line in enumerate(lines):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_at is not None:
                raise ValueError(f"{path}:{i + 1}: BEGIN SOLUTION inside the region opened at line "
                                 f"{open_at.start() + 1}; regions cannot nest")
            if begin["topic"] not in TOPICS:
                raise ValueError(f"{path}:{i + 1}: unknown topic {begin['topic']!r}; "
                                 f"topics are {list(TOPICS)}")
            open_at, start = begin, i
        elif end:
            if open_at is None:
                raise ValueError(f"{path}:{i + 1}: END SOLUTION without a BEGIN SOLUTION")
            if end["indent"] != open_at["indent"]:
                raise ValueError(f"{path}:{i + 1}: END SOLUTION is not indented like its BEGIN "
                                 f"(line {start + 1})")
            regions.append((start, i, open_at["topic"], open_at["hint"], open_at["indent"]))
            open_at = None
        elif "SOLUTION" in line and re.match(r"\s*#\s*(BEGIN|END)\b", line):
            raise ValueError(f"{path}:{i + 1}: malformed marker {line.strip()!r}; write "
                             "'# BEGIN SOLUTION <topic>: <hint>' or '# END SOLUTION'")
    if open_at is not None:
        raise ValueError(f"{path}:{start + 1}: BEGIN SOLUTION is never closed by END SOLUTION")
    try:
        spans = _function_spans(ast.parse("".join(lines), filename=path))
    except SyntaxError:  # a student's unfinished file: judge by indentation (grade.py must still run)
        spans = None
    out = []
    for start, end, topic, hint, indent in regions:
        first = next((k for k in range(start + 1, end) if lines[k].strip()), start) + 1  # 1-based
        inside = [name for lo, hi, name in spans if lo < first <= hi] if spans is not None else [indent]
        where = inside[-1] if inside and spans is not None else lines[first - 1].strip().split("(")[0]
        if where.startswith("#"):  # a module-level stub: name it after the primitive defined above it
            defs = [m[1] for m in (re.match(r"def (\w+)\(", x) for x in lines[:start]) if m]
            where = f"{defs[-1]}.defvjp" if defs else where
        out.append(Region(path, topic, hint, start, end, indent, where, bool(inside and inside[-1])))
    return out


def _atomic_writer(path, mode):
    # Imported only when a file is written: grading must work on a copy whose minivae does not
    # even import (a student's syntax error).
    from minivae.fileio import atomic_writer
    return atomic_writer(path, mode)


def _read_lines(path):
    with open(path, encoding="utf-8", newline="") as f:  # newline="": keep the file's line endings
        return f.read().splitlines(keepends=True)


def source_files(root=ROOT):
    """The .py files that may hold regions, as paths relative to root."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for d in SOURCE_DIRS for p in (root / d).rglob("*.py")
                  if not any(part in EXCLUDED for part in p.relative_to(root).parts))


def all_regions(root=ROOT):
    """Every solution region under root, file by file, top to bottom."""
    return [r for f in source_files(root) for r in find_regions(_read_lines(Path(root) / f), f)]


def is_stub(lines, region):
    """True if the region's body is exactly the student-copy stub (nothing written yet)."""
    return lines[region.begin + 1:region.end] == [region.stub()]


def _only_vjp_registrations(body):
    """True if these module-level lines are nothing but `name.defvjp(...)` / `.defvjp_all(...)` calls."""
    return all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
               and isinstance(s.value.func, ast.Attribute)
               and s.value.func.attr in ("defvjp", "defvjp_all")
               for s in ast.parse("".join(body)).body)


def blank_lines(lines, path, select):
    """The file with the body of every region for which select(region) is true replaced by its stub."""
    out, last = [], 0
    for r in find_regions(lines, path):
        if select(r):
            if not any(ln.strip() and not ln.strip().startswith("#") for ln in lines[r.begin + 1:r.end]):
                raise ValueError(f"{path}:{r.begin + 1}: the region has no code")
            if not r.in_function and not _only_vjp_registrations(lines[r.begin + 1:r.end]):
                raise ValueError(f"{path}:{r.begin + 1}: a module-level region may hold only VJP "
                                 "registrations (name.defvjp(...)); put other code in a function")
            out += lines[last:r.begin + 1] + [r.stub()]
            last = r.end
    out += lines[last:]
    ast.parse("".join(out), filename=path)  # a region placed so that its stub breaks the syntax
    return out


def _excluded(name):
    return name in EXCLUDED or name.endswith(EXCLUDED_SUFFIXES)


def make_assignment(out, topics=None, root=ROOT, select=None, student=None):
    """Write a student copy of the repository at `out`, with the regions of `topics` blanked.

    topics: names from TOPICS (None = all of them, () = none: a plain copy). `select` (a
    function Region -> bool) overrides topics, e.g. to blank a single region. A student copy
    (student=None: whenever something is blanked) also leaves out LEFT_OUT, stubs the benchmark
    and gets ASSIGNMENT.md and its record of topics (scripts/assignment_lib.py); the copies that
    measure the topic map are not student copies. The copy is built next to `out` and renamed
    into place, so `out` is either complete or absent. Returns the list of blanked regions.
    """
    root, out = Path(root).resolve(), Path(out).resolve()
    topics = list(TOPICS) if topics is None else list(topics)
    if [t for t in topics if t not in TOPICS]:
        raise ValueError(f"unknown topic(s) {[t for t in topics if t not in TOPICS]}; choose from {list(TOPICS)}")
    select = select or (lambda region: region.topic in topics)
    if out == root or (root in out.parents and not _excluded(out.relative_to(root).parts[0])):
        raise ValueError(f"--out {out} is inside the repository being copied; choose a folder "
                         f"outside {root} (or under its runs/)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        shutil.copytree(root, build, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if _excluded(n) or Path(d, n) == out
                                                 or Path(d, n) == root / lib.GRADER])
        blanked = []
        for f in source_files(build):
            lines = _read_lines(build / f)
            chosen = [r for r in find_regions(lines, f) if select(r)]
            if chosen:
                for i, line in lib.vjp_docstring_edits(lines, chosen).items():
                    lines[i] = line
                with open(build / f, "w", encoding="utf-8", newline="") as fh:
                    fh.writelines(blank_lines(lines, f, select))
                blanked += chosen
        for topic in sorted({r.topic for r in blanked} & set(lib.SPEED_CODE)):
            path = build / lib.SPEED_CODE[topic][0]
            path.write_text(lib.replace_speed_code(path.read_text(), topic))
        if student if student is not None else bool(blanked):
            _make_student_copy(build, [t for t in TOPICS if any(r.topic == t for r in blanked)], blanked)
        if out.exists():
            out.rmdir()
        os.replace(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return blanked


def _make_student_copy(build, topics, blanked):
    """Leave out the worked solutions, write ASSIGNMENT.md and the record, point the README there."""
    left_out = [f for f in LEFT_OUT if (build / f).is_file()]
    for f in left_out:
        (build / f).unlink()
    (build / lib.STUB_SCRIPT).write_text(lib.STUB_TEXT)
    (build / "ASSIGNMENT.md").write_text(lib.assignment_md(topics, TOPICS, blanked, left_out))
    lib.write_record(build, topics, left_out)
    readme = build / "README.md"
    readme.write_text("> **A student copy.** Your topics and how to test them are in "
                      "[ASSIGNMENT.md](ASSIGNMENT.md).\n\n" + readme.read_text())


def restore(copy, topics=None, root=ROOT, select=None):
    """Put the reference code of `topics` (None = all) back into the regions of a student copy.

    Whatever the student wrote in those regions is replaced, and the VJP formulas in the
    docstrings come back; other regions are left alone. `select` (Region -> bool) overrides
    topics, e.g. to restore one region. The copy's regions must be the reference's (same files,
    topics and hints, in order). Returns the list of restored regions.
    """
    topics = list(TOPICS) if topics is None else list(topics)
    select = select or (lambda region: region.topic in topics)
    restored = []
    for f in source_files(root):
        ref_lines = _read_lines(Path(root) / f)
        ref = find_regions(ref_lines, f)
        if not any(select(r) for r in ref):
            continue
        target = Path(copy) / f
        if not target.is_file():
            raise FileNotFoundError(f"{target} is missing: is {copy} a copy made by make_assignment.py?")
        mine = find_regions(lines := _read_lines(target), f)
        if [(r.topic, r.hint) for r in mine] != [(r.topic, r.hint) for r in ref]:
            raise ValueError(f"{target}: its solution regions differ from the reference's "
                             f"({len(mine)} regions, the reference has {len(ref)}); were markers edited?")
        out, last = [], 0
        for r_ref, r in zip(ref, mine):
            if select(r_ref):
                out += lines[last:r.begin + 1] + ref_lines[r_ref.begin + 1:r_ref.end]
                last = r.end
                restored.append(r_ref)
        out += lines[last:]
        for i, stripped in lib.vjp_docstring_edits(ref_lines, [r for r in ref if select(r)]).items():
            if stripped in out:
                out[out.index(stripped)] = ref_lines[i]
        with _atomic_writer(target, "wb") as fh:  # bytes: keep the file's own line endings
            fh.write("".join(out).encode("utf-8"))
    for topic in sorted({r.topic for r in restored} & set(lib.SPEED_CODE)):
        path = lib.SPEED_CODE[topic][0]
        text = lib.restore_speed_code((Path(copy) / path).read_text(), (Path(root) / path).read_text(), topic)
        with _atomic_writer(Path(copy) / path, "w") as fh:
            fh.write(text)
    return restored


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="topics:\n" + "\n".join(f"  {k:14s}{v}"
                                                                      for k, v in TOPICS.items()))
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", type=Path,
                        help="write a student copy of the repository to this new folder")
    action.add_argument("--restore", type=Path, metavar="COPY",
                        help="put the reference solutions of the --only topics back into a student copy")
    action.add_argument("--update-map", nargs="*", metavar="TEST",
                        help=f"re-measure {TOPIC_MAP} (runs the test suite 1 + {len(TOPICS)} times, "
                             "a core each); with test files or ids, only those, merged into the map")
    action.add_argument("--list", action="store_true", help="list the topics and their regions")
    parser.add_argument("--only", nargs="+", metavar="TOPIC", choices=list(TOPICS),
                        help="topics to blank (or restore); default: all")
    parser.add_argument("--jobs", type=int, help="--update-map: test runs at a time (default: one per core)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip collecting the tests to see whether the topic map is current")
    args = parser.parse_args(argv)

    if args.list:
        for topic, about in TOPICS.items():
            print(f"{topic}: {about}")
            for r in [r for r in all_regions() if r.topic == topic]:
                print(f"    {r.path}:{r.begin + 1}  {r.where}  -- {r.hint}")
        return 0
    if args.update_map is not None:
        start = time.perf_counter()
        needs = update_topic_map(args.update_map, jobs=args.jobs)
        print(f"wrote {TOPIC_MAP}: {len(needs)} tests, {sum(not t for t in needs.values())} in no topic "
              f"({time.perf_counter() - start:.0f} s)")
        return 0
    try:
        if args.restore:
            done = restore(args.restore, args.only)
            print(f"restored {len(done)} regions in {args.restore}: "
                  + ", ".join(sorted({r.topic for r in done})))
            return 0
        blanked = make_assignment(args.out, args.only)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    for topic in [t for t in TOPICS if any(r.topic == t for r in blanked)]:
        files = sorted({r.path for r in blanked if r.topic == topic})
        print(f"{topic:14s}{sum(r.topic == topic for r in blanked):3d} regions in {', '.join(files)}")
    collected = collect_tests(ROOT) if not args.no_check else None
    stale = set(collected or ()) ^ set(load_topic_map(ROOT) if (ROOT / TOPIC_MAP).is_file() else {})
    stale = {t for t in stale if t.split("::")[0] not in LEFT_OUT}
    if collected is not None and stale:
        print(f"warning: {TOPIC_MAP} is out of date ({len(stale)} tests added or removed since it "
              "was measured); grading will list them apart. Run --update-map to re-measure.")
    print(f"wrote the student copy to {args.out}\n  cd {args.out} && pip install -e '.[test]' && "
          "python scripts/grade.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
