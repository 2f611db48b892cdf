"""The reading order is one list, and true: minivae/__init__.py, the README's module map and
docs/guide.md name the same modules in the same order, every module is in it, and each module
imports only modules above it. The README stays short: at most 150 lines, two Quickstart commands."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT / "minivae").glob("*.py") if p.stem != "__init__")


def _order(text):
    """Module names in order of first mention as `name.py` (or `minivae/name.py`)."""
    names = []
    for name in re.findall(r"(?:minivae/)?\b(\w+)\.py\b", text):
        if name in MODULES and name not in names:
            names.append(name)
    return names


def _package_docstring_order():
    return _order(ast.get_docstring(ast.parse((ROOT / "minivae" / "__init__.py").read_text())))


def _readme_order():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## How the code is organised"):]
    table = section[:section.index("\n\n", section.index("| module |"))]
    return _order(" ".join(re.findall(r"^\| ([^|]*) \|", table, re.M)))  # the first column of each row


def _guide_order():
    guide = (ROOT / "docs" / "guide.md").read_text()
    start = guide.index("The same order as the module map in the README")
    items = re.findall(r"^\d+\. (.*?) —", guide[start:guide.index("Then the scripts", start)], re.M)
    return _order(" ".join(items))  # each numbered item names its modules before the dash


def test_every_module_is_in_the_reading_order():
    assert sorted(_package_docstring_order()) == MODULES


def test_readme_and_guide_give_the_package_docstrings_order():
    order = _package_docstring_order()
    assert _readme_order() == order
    assert _guide_order() == order


def _package_imports(path):
    """Names of the minivae modules that a module imports (from . import x / from .x import y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("minivae")):
            module = (node.module or "").removeprefix("minivae").lstrip(".")
            found |= {module.split(".")[0]} if module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("minivae.")}
    return found & set(MODULES)


def test_each_module_imports_only_modules_above_it():
    order = _package_docstring_order()
    for i, name in enumerate(order):
        below = _package_imports(ROOT / "minivae" / f"{name}.py") - set(order[:i])
        assert not below, f"minivae/{name}.py imports {sorted(below)}, which come after it in the reading order"


def test_every_command_line_option_says_what_it_does():
    """--help is the scripts' manual: each add_argument carries a help text."""
    silent = []
    for path in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
                    and not any(k.arg == "help" for k in node.keywords)):
                silent.append(f"{path.name}:{node.lineno} {ast.unparse(node.args[0]) if node.args else ''}")
    assert not silent, "options without help=: " + ", ".join(silent)


def test_the_readme_stays_within_150_lines():
    """The README is the front door: the detail lives in docs/, linked from it."""
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 150, f"README.md has {n} lines (at most 150; move the detail to docs/)"


def test_the_quickstart_has_exactly_two_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quickstart"):readme.index("## How the code is organised")]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assert len(block.strip().splitlines()) == 2, block


TEXTBOOK = ("engine", "ops", "layers", "distributions", "elbo", "optim", "diagnostics")  # the rooms students read
SPEED_IMPORTS = ("ctypes", "threading", "concurrent", "multiprocessing")


def _speed_work(source):
    """Lines of `source` that import ctypes or threads, or call a function with an out= buffer."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            if any(m.split(".")[0] in SPEED_IMPORTS for m in modules):
                found.append(f"line {node.lineno} imports {', '.join(filter(None, modules))}")
        elif isinstance(node, ast.Call) and any(k.arg == "out" for k in node.keywords):
            found.append(f"line {node.lineno} calls {ast.unparse(node.func)} with out=")
    return found


def test_the_textbook_modules_hold_no_speed_work():
    """No ctypes, no threads and no out= buffers where students read: those live in fused.py and fast.py."""
    found = {name: _speed_work((ROOT / "minivae" / f"{name}.py").read_text()) for name in TEXTBOOK}
    assert not any(found.values()), f"speed work in a textbook module: { {k: v for k, v in found.items() if v} }"


def test_the_speed_work_check_sees_each_kind():
    """Negative control: the check above flags each kind of speed work, and plain lines pass."""
    for line in ("import ctypes", "from concurrent.futures import ThreadPoolExecutor", "import threading",
                 "np.exp(x, out=x)"):
        assert _speed_work(line), line
    assert _speed_work("import numpy as np\ny = np.exp(x)\nz = np.sum(y, axis=0)") == []
