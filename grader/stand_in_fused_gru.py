"""The stand-in for fused.gru_sequence in copies with the GRU topic blanked (make_assignment.py).

Not imported from here: make_assignment.py pastes the text below this docstring into the copy's
minivae/fused.py in place of the fused GRU, whose hand-written backward pass repeats the GRU
equations the student writes.
"""
def _unrolled_gru(x_proj, h0, W_h, b_h, mask, reverse):
    """The GRU over all steps from Tensors, one layers.GRUCell.step at a time."""
    from types import SimpleNamespace
    from .layers import GRUCell
    H = W_h.shape[0]
    cell = SimpleNamespace(W_h=W_h, b_h=b_h, n_hidden=H)  # what GRUCell.step reads of its cell
    outputs, h = [None] * x_proj.shape[1], h0
    for t in (reversed(range(x_proj.shape[1])) if reverse else range(x_proj.shape[1])):
        real = mask[:, t, None]
        h_new = GRUCell.step(cell, x_proj[:, t], h)
        h = ops.where(real, h_new, h)
        outputs[t] = ops.where(real, h_new, 0.0)
    return ops.stack(outputs, axis=1)


@primitive
def gru_sequence(x_proj, h0, W_h, b_h, *, mask, reverse=False):
    """The outputs (B, T, H) of a GRU run over a padded batch: YOUR GRUCell.step, unrolled.

    In this copy the fused GRU (its hand-written backward through time repeats the equations
    you write in layers.GRUCell.step) is left out. This stand-in keeps its interface: one node
    whose forward unrolls your cell, and whose VJP runs the engine backwards through that unrolled
    graph. Same results, slower.
    """
    _gru_shapes(x_proj, h0, W_h, b_h, mask)
    out = _unrolled_gru(*[Tensor(a) for a in (x_proj, h0, W_h, b_h)], np.asarray(mask, bool), reverse)
    return out.data


def _gru_sequence_vjp(g, ans, x_proj, h0, W_h, b_h, mask, reverse):
    inputs = [Tensor(a, requires_grad=True) for a in (x_proj, h0, W_h, b_h)]
    previous, engine._grad_enabled = engine._grad_enabled, True  # the VJP records its own graph
    try:
        _unrolled_gru(*inputs, np.asarray(mask, bool), reverse).backward(g)
    finally:
        engine._grad_enabled = previous
    return [t.grad if t.grad is not None else np.zeros_like(t.data) for t in inputs]
gru_sequence.defvjp_all(_gru_sequence_vjp)
