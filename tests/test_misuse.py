"""The API students call directly refuses misuse with a message that names the argument: Tensor
operators, layer constructors and calls, optimisers (including a step with NaN gradients)."""
import numpy as np
import pytest

from minivae import Tensor, ops
from minivae.gradcheck import check_grads
from minivae.layers import GRU, MLP, Dense, Embedding, GRUCell, dropout_mask
from minivae.optim import SGD, Adam, NonFiniteGradientError

RNG = np.random.default_rng(0)


def param(value, grad=None):
    p = Tensor(np.asarray(value, dtype=np.float32), requires_grad=True)
    p.grad = None if grad is None else np.asarray(grad, dtype=np.float32)
    return p


@pytest.mark.parametrize("make, error, message", [
    (lambda: Tensor(np.ones(2)) + "a", TypeError, "op 'add': cannot make a Tensor from str"),
    (lambda: Tensor(np.ones((2, 3))) @ Tensor(np.ones((2, 3))), ValueError, "op 'matmul' on inputs of shapes"),
    (lambda: Tensor(np.ones((2, 3))) + Tensor(np.ones(4)), ValueError, r"op 'add' on inputs of shapes \(2, 3\), \(4,\)"),
    (lambda: Tensor(np.ones(2)) * Tensor(np.ones(2, np.float32)), TypeError, "mixes float dtypes"),
    (lambda: Tensor(None), TypeError, "cannot make a Tensor from NoneType"),
])
def test_tensor_misuse_names_the_op_and_the_inputs(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("make, error, message", [
    (lambda: Dense(0, 3, RNG), ValueError, "Dense: n_in must be a positive integer, got 0"),
    (lambda: Dense(2.5, 3, RNG), ValueError, "Dense: n_in must be a positive integer, got 2.5"),
    (lambda: Dense(2, True, RNG), ValueError, "Dense: n_out must be a positive integer"),
    (lambda: Dense(2, 3, None), TypeError, "Dense: rng must be a np.random.Generator"),
    (lambda: Dense(2, 3, 42), TypeError, r"np.random.default_rng\(seed\)"),
    (lambda: Dense(2, 3, RNG, dtype=np.int32), TypeError, "Dense: dtype must be a float type"),
    (lambda: Embedding(-1, 3, RNG), ValueError, "Embedding: n_vocab must be a positive integer"),
    (lambda: GRUCell(3, 0, RNG), ValueError, "GRUCell: n_hidden must be a positive integer"),
    (lambda: GRU(3, 0, RNG), ValueError, "GRUCell: n_hidden must be a positive integer"),
    (lambda: MLP([784], "relu", RNG), ValueError, "at least two positive layer sizes"),
    (lambda: MLP([4, 3], "gelu", RNG), ValueError, "unknown activation 'gelu'"),
    (lambda: dropout_mask((2, 3), 1.5, RNG), ValueError, r"in \[0, 1\), got 1.5.*collapse.word_dropout"),
])
def test_layer_constructors_name_the_bad_argument(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_layer_calls_refuse_wrong_inputs():
    with pytest.raises(ValueError, match=r"op 'matmul' on inputs of shapes \(4, 5\), \(2, 3\)"):
        Dense(2, 3, RNG)(Tensor(np.ones((4, 5), np.float32)))
    with pytest.raises(TypeError, match="integer token ids"):
        Embedding(5, 3, RNG)(np.array([0.5]))
    with pytest.raises(IndexError, match=r"token ids must be in \[0, 5\), got ids from 0 to 7"):
        Embedding(5, 3, RNG)(np.array([0, 7]))


@pytest.mark.parametrize("make, error, message", [
    (lambda: Adam(np.ones(3)), TypeError, "params must be a list of Tensors"),
    (lambda: Adam([np.ones(2)]), TypeError, r"params\[0\] is a numpy array, not a Tensor"),
    (lambda: Adam([Tensor(np.ones(2))]), ValueError, r"params\[0\] has requires_grad=False"),
    (lambda: Adam([param([1.0])], lr=float("nan")), ValueError, "lr must be a finite number > 0, got nan"),
    (lambda: Adam([param([1.0])], betas=(1.0, 0.9)), ValueError, r"beta1 must be in \[0, 1\)"),
    (lambda: Adam([param([1.0])], nonfinite="ignore"), ValueError, "nonfinite must be one of"),
    (lambda: SGD([param([1.0])], lr=None), ValueError, "lr must be a finite number > 0, got None"),
])
def test_optimiser_constructors_name_the_bad_argument(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=0.1), lambda ps: SGD(ps, lr=0.1, momentum=0.9)])
def test_a_step_with_nan_gradients_is_refused_and_changes_nothing(make):
    a, b = param([1.0, 2.0], grad=[0.5, 0.5]), param([3.0], grad=[np.nan])
    opt = make([a, b])
    before = [p.data.copy() for p in (a, b)], {k: np.copy(v) for k, v in opt.state_dict().items()}
    with pytest.raises(NonFiniteGradientError, match=r"params\[1\] \(shape \(1,\)\) has 1 NaN or infinite"):
        opt.step()
    np.testing.assert_array_equal(a.data, before[0][0])     # a's gradient was fine, but nothing moved
    after = opt.state_dict()
    assert all(np.array_equal(after[k], v) for k, v in before[1].items())


def test_skip_mode_skips_loudly_and_counts():
    a, b = param([1.0, 2.0], grad=[0.5, 0.5]), param([3.0], grad=[np.inf])
    opt = Adam([a, b], lr=0.1, nonfinite="skip")
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    assert opt.skipped_steps == 1 and a.data.tolist() == [1.0, 2.0] and int(opt.steps.sum()) == 0
    b.grad = np.array([0.5], np.float32)
    opt.step()                                               # finite again: a normal step
    assert opt.skipped_steps == 1 and a.data[0] < 1.0 and b.data[0] < 3.0


@pytest.mark.parametrize("call, message", [
    (lambda: check_grads(3, np.ones(2)), "needs a function and at least one input array, got f=int"),
    (lambda: check_grads(lambda: Tensor(1.0)), "and 0 inputs"),
    (lambda: check_grads(lambda x: 1.0, np.ones(2)), "f must return a Tensor built with minivae ops, got float"),
    (lambda: check_grads(lambda x: np.sum(x.data), np.ones(2)), "got float64"),
    (lambda: check_grads(lambda x: ops.sum(x * x), np.ones(2, int)), "needs float64 inputs"),
])
def test_check_grads_misuse_names_the_problem(call, message):
    with pytest.raises(TypeError, match=message):
        call()
