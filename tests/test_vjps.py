"""Every row of the op table, with each op's VJP checked on its own: no backward pass involved.

gradcheck.check_vjp compares a primitive's VJP at given input values with central differences
of its forward function. Unlike the gradient checks of tests/test_ops.py, it does not run
Tensor.backward, so these tests judge the ops alone: an unfinished or wrong engine leaves them
alone, and writing one VJP makes its own rows pass.
"""
import numpy as np
import pytest

from minivae import Tensor
from minivae.gradcheck import check_vjp
from test_ops import _case_ids, _inputs, _with_scale

pytestmark = pytest.mark.ops  # graded under the ops topic (tests/conftest.py)


def _nodes(root):
    """Every node that root was computed from (any order)."""
    found, stack = {}, [root]
    while stack:
        node = stack.pop()
        if id(node) not in found:
            found[id(node)] = node
            stack.extend(p for p in node._parents if p.requires_grad)
    return found.values()


@pytest.mark.parametrize("row, case", list(_case_ids()))
def test_vjp_of_each_op_alone(row, case):
    arrays = _inputs(row, case, np.random.default_rng(0))
    out = _with_scale(row, row.fn)(*[Tensor(a, requires_grad=True) for a in arrays])
    nodes = [n for n in _nodes(out) if n._op is not None and n._op.name == row.name]
    assert nodes, f"{row.name} does not appear in the graph of its row"
    for node in nodes:
        problems = check_vjp(node._op, [p.data for p in node._parents], node._params,
                             [p.requires_grad for p in node._parents])
        assert not problems, f"op '{row.name}': " + "; ".join(p["message"] for p in problems)
