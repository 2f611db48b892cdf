"""What scripts/make_assignment.py and scripts/grade.py share: running the tests of a copy, the
topic map, and what makes a student copy more than the reference with holes in it.

Not a script of its own. make_assignment.py imports it (Python puts the scripts folder on
sys.path); the names it uses are re-exported there.

A student copy also
  * loses each blanked VJP's formula from its primitive's docstring (the forward's meaning stays:
    "x * y.  VJP: yours to derive (ops)."), and gets it back on restore,
  * leaves out the files that hold worked solutions of blanked code (LEFT_OUT: the benchmark's
    hand-written models repeat the backward pass, the sampler, the KL and the Adam update),
  * gets ASSIGNMENT.md (which topics, in which order, the commands, what done looks like) and
    tests/assignment.json (the topics, for grade.py), and a first line in README.md pointing there.
"""
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TOPIC_MAP = "tests/assignment_topics.json"
RECORD = "tests/assignment.json"       # in a copy: {"topics": [...], "left_out": [...]}
ASSIGNMENT_TEST = "tests/test_assignment.py"  # never run inside a copy: it would make copies of copies
LEFT_OUT = ("scripts/bench/bench_numpy.py", "scripts/bench/bench_autograd.py", "scripts/bench/bench_torch.py",
            "scripts/bench/bench_measure.py", "scripts/bench/bench_workloads.py", "tests/test_benchmark.py")
STUB_SCRIPT = "scripts/bench/benchmark.py"    # replaced by a stub that says why it is not here
STUB_TEXT = ('"""The benchmark is left out of student copies: its hand-written NumPy models hold worked\n'
             'solutions of the assignment (the backward pass, the sampler, the KL, the Adam update)."""\n'
             'import sys\n\n\ndef main(argv=None):\n    print(__doc__)\n    return 1\n\n\n'
             'if __name__ == "__main__":\n    sys.exit(main())\n')
VJP_SENTENCE = re.compile(r"VJP: .*?\.(?=\s|\"|$)")

# What each topic's lab shows once the topic is done (scripts/labs.py), and what done looks like.
DONE = {
    "engine": ("every test of `pytest -m engine` passes: one small test per classic mistake (order, "
               "adding on fan-out, aliasing, unbroadcasting, constants, detach, no_grad)",
               "python scripts/labs.py graph"),
    "ops": ("`pytest -m ops` passes: each VJP alone (tests/test_vjps.py), then through the engine "
            "against finite differences and HIPS autograd (tests/test_ops.py)", "python scripts/labs.py graph"),
    "distributions": ("the sampler's variance is exp(logvar) and the analytic KL matches Monte Carlo",
                      "python scripts/labs.py sampler && python scripts/labs.py kl"),
    "free_bits": ("a dimension below the floor gets exactly zero KL gradient; free bits bring active "
                  "units back in a collapse run", "python scripts/labs.py free_bits"),
    "schedules": ("cyclical annealing matches Fu et al.'s reference code", "python scripts/labs.py schedules"),
    "optim": ("Adam's first steps match Algorithm 1 by hand; the MNIST VAE learns",
              "python scripts/labs.py mnist"),
    "gru": ("your cell, unrolled, matches the fused GRU in outputs and every gradient", None),
    "iwae": ("K = 1 gives the ELBO and the bound rises with K", "python scripts/labs.py iwae"),
}


def vjp_docstring_edits(lines, regions):
    """{line index: line without the VJP formula} for the docstrings of the primitives whose VJPs
    these regions hold (a module-level `exp.defvjp(...)`, or a function passed to `matmul.defvjp`)."""
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return {}
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    owner = {}  # a VJP function's name -> the primitive it is registered on
    for n in tree.body:
        call = n.value if isinstance(n, ast.Expr) else None
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr in ("defvjp", "defvjp_all") and isinstance(call.func.value, ast.Name)):
            owner.update({a.id: call.func.value.id for a in call.args if isinstance(a, ast.Name)})
    edits = {}
    for r in regions:
        fn = defs.get(owner.get(r.where) if r.in_function else r.where.split(".")[0])
        if fn is None or ast.get_docstring(fn) is None:
            continue
        doc = fn.body[0]
        for i in range(doc.lineno - 1, doc.end_lineno):
            new = VJP_SENTENCE.sub(f"VJP: yours to derive ({r.topic}).", lines[i])
            if new != lines[i]:
                edits[i] = new
    return edits


def solution_lines(lines, region, min_chars=16):
    """The region's distinctive code lines, whitespace removed (short and comment lines skipped)."""
    out = []
    for line in lines[region.begin + 1:region.end]:
        code = re.sub(r"\s+", "", line.split("  #")[0])
        if len(code) >= min_chars and not code.startswith("#"):
            out.append(code)
    return out


def find_leaks(copy, wanted):
    """[(file, solution line)] for every solution line (whitespace removed) found in a text file
    of the copy. wanted: {solution line: region description}."""
    leaks = []
    for path in sorted(Path(copy).rglob("*")):
        if path.suffix not in (".py", ".md", ".txt", ".cfg", ".toml", ".json") or not path.is_file():
            continue
        text = re.sub(r"\s+", "", path.read_text(encoding="utf-8", errors="replace"))
        leaks += [(path.relative_to(copy).as_posix(), line) for line in wanted if line in text]
    return leaks


def assignment_md(topics, about, regions, left_out):
    """The copy's ASSIGNMENT.md: the topics in order, where to write, how to test and grade."""
    out = ["# Your assignment", "",
           f"Topics, in the order to do them: **{', '.join(topics)}**. Each later topic builds on the",
           "earlier ones. Write your code between the `# BEGIN SOLUTION` and `# END SOLUTION` lines",
           "(leave the markers in place); nothing else needs to change.", "",
           "```bash", "pip install -e \".[test]\"", "python scripts/grade.py --explain   "
           "# a score per topic; the smallest failing test of each", "```", ""]
    for k, topic in enumerate(topics, 1):
        done, lab = DONE.get(topic, ("its tests pass", None))
        out += [f"## {k}. {topic}: {about[topic]}", ""]
        out += [f"- `{r.path}`, line {r.begin + 1}: `{r.where}` -- {r.hint}" for r in regions if r.topic == topic]
        out += ["", f"Test it with `pytest -m {topic}` (one test: `pytest -m {topic} -k NAME`). "
                f"Done when {done}."]
        if lab:
            out += ["", f"Then see it work: `{lab}` (the lab prints what to expect)."]
        out += [""]
    out += ["## When a gradient is wrong", "",
            "`check_grads` names the first op whose VJP disagrees with finite differences, with the "
            "largest wrong entries. On any loss: `from minivae.gradcheck import find_wrong_vjp; "
            "print(find_wrong_vjp(loss))`, and `minivae.graph.draw_graph(loss, \"graph.png\", "
            "highlight=True)` draws the graph with the wrong node in red.", ""]
    if left_out:
        out += [f"Left out of this copy because they hold worked solutions: {', '.join(left_out)}.", ""]
    return "\n".join(out)


def write_record(copy, topics, left_out):
    with open(Path(copy) / RECORD, "w") as f:
        json.dump({"topics": list(topics), "left_out": list(left_out)}, f, indent=1)


def read_record(copy):
    """The copy's {"topics", "left_out"}, or None in the reference (every topic, nothing left out)."""
    path = Path(copy) / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- running the tests

def _pytest(repo, args, timeout=None):
    """Run `python -m pytest ARGS` in repo without tests/test_assignment.py (in a copy it would copy
    the copy) and without third-party plugins (the suite needs none, and a grade should not
    depend on what else is installed)."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--ignore={ASSIGNMENT_TEST}", *args]
    env = {**os.environ, "MINIVAE_ASSIGNMENT_CHILD": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    try:
        return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the tests in {repo} did not finish within {timeout} s (an endless loop?); "
                           "run `pytest -x -v` there to see which test hangs") from None


def run_tests(repo, tests=(), extra_args=(), timeout=None, messages=False, everything=False):
    """Run the default test suite (or the given test ids) in `repo`; return {test id: outcome}.

    outcome is "passed", "failed" or "skipped" (a setup error counts as failed). With
    messages=True, return also {test id or file: the first line of its failure}; with
    everything=True, the whole record instead (outcomes, messages, details, topics, durations).
    pytest runs in a subprocess with the repository as working directory, so the tests import
    that repository's minivae (tests/conftest.py makes sure of it).
    """
    with tempfile.TemporaryDirectory(prefix="minivae-outcomes-") as tmp:
        results = Path(tmp) / "outcomes.json"
        proc = _pytest(repo, ["-q", "--continue-on-collection-errors", f"--outcomes={results}",
                              *extra_args, *tests], timeout)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        if not results.is_file():
            raise RuntimeError(f"pytest in {repo} wrote no results (exit code {proc.returncode}); "
                               f"its output ends:\n{tail}")
        result = json.loads(results.read_text())
    if proc.returncode not in (0, 1, 5):  # 0: all passed, 1: some failed, 5: none selected
        raise RuntimeError(f"pytest in {repo} exited with code {proc.returncode}:\n{tail}")
    if everything:
        return result
    return (result["outcomes"], result["messages"]) if messages else result["outcomes"]


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
