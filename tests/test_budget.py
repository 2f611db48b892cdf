"""Code-line budgets: small modules a reader can hold in mind, enforced as tinygrad enforces its own.

A code line is a line holding code: docstrings, comments and blank lines are not counted, so
explaining costs nothing. Every file found by the globs is checked, so a new module or script
is covered without editing this table.
"""
import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"minivae/engine.py": 250, "minivae/*.py": 250, "scripts/*.py": 300, "scripts/bench/*.py": 300}  # first match wins


def code_lines(path):
    """Lines holding code: docstrings, comments and blank lines are not counted."""
    source = Path(path).read_text()
    lines, previous = set(), tokenize.INDENT
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        is_docstring = tok.type == tokenize.STRING and previous in (tokenize.INDENT, tokenize.NEWLINE,
                                                                    tokenize.DEDENT)
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER) and not is_docstring:
            lines.update(range(tok.start[0], tok.end[0] + 1))
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            previous = tok.type
    return len(lines)


def _budgeted_files():
    budget = {}
    for pattern, limit in BUDGETS.items():
        for path in sorted(ROOT.glob(pattern)):
            budget.setdefault(path.relative_to(ROOT).as_posix(), limit)
    return budget


FILES = _budgeted_files()


@pytest.mark.parametrize("name", FILES)
def test_file_stays_within_its_code_line_budget(name):
    n = code_lines(ROOT / name)
    assert n <= FILES[name], f"{name} has {n} code lines (budget {FILES[name]})"


def test_every_module_and_script_has_a_budget():
    assert "minivae/engine.py" in FILES and "minivae/ops.py" in FILES and "scripts/bench/benchmark.py" in FILES


def test_code_line_counter_skips_docstrings_and_comments(tmp_path):
    src = '"""Module doc."""\nimport os  # comment\n\n\ndef f():\n    """Doc\n    more."""\n    return 1\n'
    (tmp_path / "m.py").write_text(src)
    assert code_lines(tmp_path / "m.py") == 3  # import, def, return


def test_the_engine_imports_nothing_from_the_package():
    code = "import minivae.engine, sys; print(sorted(m for m in sys.modules if m.startswith('minivae')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "['minivae', 'minivae.engine']"


def test_importing_tensor_from_the_package_gives_it_operators():
    code = "from minivae import Tensor, no_grad, PRIMITIVES; print((Tensor(2.0) * 3 + 1).item())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "7.0"
