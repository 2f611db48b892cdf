"""Charts beside plot.py's: panels of lines (a signal and its predicted continuations) and a bar chart.

Each function saves one PNG atomically through plot.py's helpers and returns its path.
"""
import math

import numpy as np

from .plot import _new_figure, _save


def line_panels(panels, path, ncol=2, title=None):
    """Save one subplot per panel (title, lines), each line (x, y, matplotlib keyword arguments
    with a "label"), e.g. a signal, its true continuation and sampled predictions of it."""
    nrow = math.ceil(len(panels) / ncol)
    fig = _new_figure((4.5 * ncol, 2.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, (panel_title, lines) in zip(axes, panels):
        for x, y, style in lines:
            ax.plot(x, y, **style)
        ax.set_title(panel_title, fontsize="medium")
        ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bar_chart(values, path, xlabel, ylabel, title):
    """Save a bar chart of `values` against their index (e.g. how often each VQ-VAE code is used)."""
    fig = _new_figure((7.0, 3.0))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(values)), values)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return _save(fig, path)
