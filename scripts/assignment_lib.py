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
Every copy leaves out grader/ (GRADER: the worked solutions tests compare against; scripts run
the tests with MINIVAE_GRADER pointing at the reference's folder), and a copy whose topic has
speed code that repeats its solution (SPEED_CODE: the fused GRU repeats the GRU equations) gets
that code replaced by a stand-in that runs the student's own solution.
"""
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
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
GRADER = "grader"  # at the root: worked solutions the tests need, never copied (tests/conftest.py)
GRADER_DIR = Path(__file__).resolve().parents[1] / GRADER

# topic -> (file, top-level names of a contiguous block of speed code that repeats the topic's
# solution, the file in grader/ holding the stand-in that replaces the block in a copy with the
# topic blanked, the imports the stand-in needs).
SPEED_CODE = {"gru": ("minivae/fused.py", ("gru_sequence", "_gru_sequence_vjp"), "stand_in_fused_gru.py",
                      "from . import engine\nfrom .engine import Tensor\n")}

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
    "gru": ("the update gate keeps or forgets a state as its name says, and a GRU learns to recall a "
            "sequence's first bit", "python scripts/labs.py gru"),
    "iwae": ("K = 1 gives the ELBO and the bound rises with K", "python scripts/labs.py iwae"),
}


# Test files that run whole scripts (training, resuming, signals, labs): they need most topics
# because training uses everything, but test none of them in particular. grade.py runs them only
# with --full; each topic's own tests are elsewhere.
END_TO_END = ("tests/test_reliability.py", "tests/test_train_mnist.py", "tests/test_train_text.py",
              "tests/test_train_autoencoder.py", "tests/test_collapse_study.py", "tests/test_sample.py",
              "tests/test_labs.py", "tests/test_train.py", "tests/test_misuse.py")

# Each region's primary test (tests/test_mistakes.py), the one `grade.py --explain` shows first:
# it checks the property the region's classic mistake breaks and says in words what is wrong.
# Keyed "file:where" (Region.where); a name without [...] stands for all its parametrisations.
# In teaching order within a topic: a region's test may use the regions listed before it.
MISTAKES = "tests/test_mistakes.py::"
PRIMARY = {
    "minivae/engine.py:unbroadcast": "test_unbroadcast_sums_over_the_broadcast_axes",
    "minivae/engine.py:_topological_order": "test_topological_order_lists_each_node_once_after_its_inputs",
    "minivae/engine.py:Tensor.backward": "test_backward_adds_the_gradients_of_every_use",
    **{f"minivae/ops.py:{op}.defvjp": f"test_vjp_alone[{op}]" for op in ("multiply", "divide", "exp", "log",
                                                                        "tanh", "sigmoid", "sum")},
    "minivae/ops.py:_logsumexp_vjp": "test_vjp_alone[logsumexp]",
    "minivae/ops.py:_matmul_vjp_x": "test_matmul_vjp_alone[x]",
    "minivae/ops.py:_matmul_vjp_y": "test_matmul_vjp_alone[y]",
    "minivae/distributions.py:sample_gaussian": "test_sampler_variance_is_exp_logvar",
    "minivae/distributions.py:kl_standard_normal_per_dim": "test_kl_per_dim_matches_numerical_integration",
    "minivae/distributions.py:bernoulli_log_likelihood": "test_bernoulli_log_likelihood_from_logits_is_exact_and_stable",
    "minivae/elbo.py:free_bits_kl": "test_free_bits_floors_what_each_mode_says",
    "minivae/schedules.py:cyclical": "test_cyclical_ramps_then_holds_in_each_cycle",
    "minivae/optim.py:Adam.step": "test_adam_moves_each_parameter_by_lr_under_a_constant_gradient",
    "minivae/layers.py:GRUCell.step": "test_gru_gates_do_what_their_names_say",
    "minivae/diagnostics.py:log_mean_exp": "test_log_mean_exp_is_the_log_of_the_mean_weight_and_never_overflows",
    "minivae/diagnostics.py:_log_weights": "test_log_weights_are_log_p_x_z_plus_log_p_z_minus_log_q",
    "minivae/elbo.py:iw_objective": "test_iw_bound_is_log_mean_exp_of_the_weights",
}


def needs_of(test, needs, topics):
    """The topics `test` needs by the map; a parametrised test missing from it (its parameters
    renamed) needs what the map's entries for the same function need (tests/conftest.py too)."""
    if test in needs or "[" not in test:
        return needs.get(test)
    base = test.split("[")[0] + "["
    same = [n for t, n in needs.items() if t.startswith(base)]
    return sorted({u for n in same for u in n}, key=list(topics).index) if same else None


def primary_tests(name, tests):
    """The ids among `tests` that PRIMARY's entry `name` stands for, in their order."""
    full = MISTAKES + name
    return [t for t in tests if t == full or ("[" not in name and t.startswith(full + "["))]


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


def _block(text, names):
    """(start, end) character offsets of the contiguous top-level block defining `names` (with
    their decorators and `name.defvjp...(...)` registrations) in a module's source."""
    tree, lines = ast.parse(text), text.splitlines(keepends=True)
    spans = []
    for n in tree.body:
        call = n.value if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) else None
        owner = call.func.value.id if call and isinstance(call.func, ast.Attribute) and isinstance(
            call.func.value, ast.Name) else None
        if getattr(n, "name", None) in names or owner in names:
            first = min([n.lineno] + [d.lineno for d in getattr(n, "decorator_list", [])])
            spans.append((first, n.end_lineno))
    if not spans:
        raise ValueError(f"none of {names} is defined at the top level")
    offset = [0]
    for line in lines:
        offset.append(offset[-1] + len(line))
    return offset[spans[0][0] - 1], offset[spans[-1][1]]


def _stand_in(topic):
    """The stand-in's code: its grader/ file without the file's docstring."""
    text = (GRADER_DIR / SPEED_CODE[topic][2]).read_text()
    return text[text.index('"""', 3) + 4:]


def replace_speed_code(text, topic):
    """The module text with the topic's speed code (SPEED_CODE) replaced by its stand-in."""
    _, names, _, imports = SPEED_CODE[topic]
    stand_in = _stand_in(topic)
    start, end = _block(text, names)
    head = text[:start]
    for line in imports.splitlines(keepends=True):
        if line not in head:
            cut = head.index("\n\n\n") + 1 if "\n\n\n" in head else 0
            last_import = max(head.rfind("\nimport "), head.rfind("\nfrom "))
            cut = head.index("\n", last_import + 1) + 1 if last_import >= 0 else cut
            head = head[:cut] + line + head[cut:]
    return head + stand_in + text[end:]


def restore_speed_code(text, reference, topic):
    """The copy's module text with the stand-in replaced by the reference's speed code again."""
    names, stand_in = SPEED_CODE[topic][1], _stand_in(topic)
    if stand_in not in text:
        return text
    start, end = _block(reference, names)
    replaced = replace_speed_code(reference, topic)
    if replaced == text:  # untouched apart from the stand-in: the reference file as it was
        return reference
    return text.replace(stand_in, reference[start:end])


def normalize_code(line):
    """A line of code as the leak search compares it: no spaces, no module prefixes (np., ops.,
    anp., numpy.), no leading `return` or assignment target, no trailing comment."""
    code = re.sub(r"\s+", "", line.split("  #")[0])
    code = re.sub(r"\b(np|anp|numpy|ops|math)\.", "", code)
    code = re.sub(r"^return", "", code)
    return re.sub(r"^[\w\[\]\.,]+(?<![=<>!])=(?!=)", "", code)


def solution_lines(lines, region, min_chars=16):
    """The region's distinctive code lines as normalize_code gives them (short lines, comment
    lines and lines without arithmetic skipped)."""
    out = []
    for line in lines[region.begin + 1:region.end]:
        code = normalize_code(line)
        if len(code) >= min_chars and not code.startswith("#") and any(op in code for op in "*/@+-"):
            out.append(code)
    return out


def _searchable(text):
    return re.sub(r"\b(np|anp|numpy|ops|math)\.", "", re.sub(r"\s+", "", text))


def find_leaks(copy, wanted):
    """[(file, solution line)] for every solution line found in a text file of the copy (spaces
    and module prefixes removed on both sides). wanted: {normalized solution line: Region}. A
    line that the region's own file still states outside its regions (a docstring giving the
    formula to implement) is the specification, not a leak, and is not searched for."""
    texts = {}
    for path in sorted(Path(copy).rglob("*")):
        if path.suffix in (".py", ".md", ".txt", ".cfg", ".toml", ".json") and path.is_file():
            texts[path.relative_to(copy).as_posix()] = _searchable(path.read_text(encoding="utf-8",
                                                                                 errors="replace"))
    spec = specified(copy, wanted)
    return [(name, line) for line in wanted if line not in spec for name, text in texts.items() if line in text]


def specified(copy, wanted):
    """The solution lines that their region's own file in the copy states outside its regions."""
    import make_assignment  # the region parser (it imports this module first)
    outside = {}
    for path in {r.path for r in wanted.values()}:
        lines = (Path(copy) / path).read_text(encoding="utf-8").splitlines(keepends=True)
        inside = {i for r in make_assignment.find_regions(lines, path) for i in range(r.begin + 1, r.end)}
        outside[path] = _searchable("".join(x for i, x in enumerate(lines) if i not in inside))
    return {line for line, region in wanted.items() if line in outside[region.path]}


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
    with tempfile.TemporaryDirectory(prefix="minivae-pytest-") as scratch:
        # Nothing is written into the copy: no __pycache__, no .pytest_cache, no .hypothesis.
        env = {**os.environ, "MINIVAE_ASSIGNMENT_CHILD": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
               "PYTHONDONTWRITEBYTECODE": "1", "HYPOTHESIS_STORAGE_DIRECTORY": scratch,
               "MINIVAE_GRADER": str(GRADER_DIR)}
        return _run(cmd, repo, env, timeout)


def _run(cmd, repo, env, timeout):
    try:
        return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the tests in {repo} did not finish within {timeout} s (an endless loop?); "
                           "run `pytest -x -v` there to see which test hangs") from None


IMPORT_CHECK = r"""
import importlib, json, os, pkgutil, sys, traceback
root = os.getcwd()
sys.path.insert(0, root)
def problem(err):
    if isinstance(err, SyntaxError) and err.filename:
        path, line, text = err.filename, err.lineno, err.msg
    else:
        inside = [f for f in traceback.extract_tb(err.__traceback__)
                  if os.path.abspath(f.filename).startswith(os.path.join(root, "minivae", ""))]
        path, line = (inside[-1].filename, inside[-1].lineno) if inside else (None, None)
        text = str(err)
    path = os.path.relpath(os.path.abspath(path), root).replace(os.sep, "/") if path else "minivae"
    return {"path": path, "line": line, "error": type(err).__name__, "message": text}
found = None
try:
    import minivae
    for name in sorted(m.name for m in pkgutil.iter_modules(minivae.__path__)):
        try:
            importlib.import_module("minivae." + name)
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] == "minivae":
                raise
except BaseException as err:
    found = problem(err)
print(json.dumps(found))
"""


def import_problem(repo, timeout=300):
    """{"path", "line", "error", "message"} of the first error importing the copy's minivae
    modules (a student's syntax error), or None if every module imports."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = _run([sys.executable, "-c", IMPORT_CHECK], repo, env, timeout)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"path": "minivae", "line": None, "error": "ImportError",
                "message": (proc.stderr.strip().splitlines() or ["the package does not import"])[-1]}


def _shards(tests, jobs):
    """The test ids split into at most `jobs` groups of whole files, of about equal size."""
    files = {}
    for t in tests:
        files.setdefault(t.split("::")[0], []).append(t)
    groups = [[] for _ in range(max(1, min(jobs, len(files))))]
    for ids in sorted(files.values(), key=len, reverse=True):
        min(groups, key=len).extend(ids)
    return [g for g in groups if g]


def run_selected(repo, tests, jobs=1, timeout=None):
    """run_tests(everything=True) for just these test ids, `jobs` pytest processes at a time (ids
    that no longer exist are ignored). Returns the merged record."""
    def run(group):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(group, f)
        try:
            files = sorted({t.split("::")[0] for t in group})
            return run_tests(repo, files, [f"--select={f.name}"], timeout, everything=True)
        finally:
            os.unlink(f.name)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        records = list(pool.map(run, _shards(tests, jobs)))
    merged = {}
    for record in records:
        for key, value in record.items():
            merged.setdefault(key, {}).update(value)
    return merged


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
