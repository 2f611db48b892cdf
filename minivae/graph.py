"""Pictures of the recorded graph: every node's op, shape and dtype, its gradient's norm, the
node the gradient debugger blames.

    from minivae.graph import draw_graph, to_dot
    loss.backward()
    draw_graph(loss, "graph.png", names=dict(model.named_parameters()))  # matplotlib only
    print(to_dot(loss))                                                   # for graphviz: dot -Tpng

The drawing is layered: a node sits one row below its lowest parent, so inputs and parameters
are at the top and the output at the bottom, and the order within a row is chosen to keep edges
short (the barycentre heuristic of Sugiyama et al. 1981). Graphs larger than `max_nodes` are
summarised: nodes of the same op in the same row become one box ("add x12"), and only the
`max_rows` rows nearest the output are drawn.
"""
import numpy as np

from . import engine
from .gradcheck import engine_agrees, find_wrong_vjp

ENGINE_NOTE = ("Every op's VJP agrees with finite differences, yet the gradients do not: the engine is at "
               "fault (Tensor.backward, _topological_order or unbroadcast); pytest -m engine names it")


def gradient_norms(root):
    """{id(node): norm of d root / d node} for every node, by one more backward pass of the engine.

    The pass runs the engine's own Tensor.backward with each op wrapped so that it notes the
    gradient it receives; leaves' .grad is put back as it was afterwards.
    """
    order = engine._topological_order(root)
    leaves = [n for n in order if n._op is None]
    saved = [n.grad for n in leaves]
    norms = {id(root): float(np.sqrt(root.size))}

    class Noting:  # the op, noting the norm of each gradient it is handed
        def __init__(self, node):
            self.node, self.op = node, node._op

        def __getattr__(self, name):
            return getattr(self.op, name)

        def vjp(self, g, *args):
            norms[id(self.node)] = float(np.linalg.norm(g))
            return self.op.vjp(g, *args)

    try:
        for n in leaves:
            n.grad = None
        for n in order:
            if n._op is not None:
                n._op = Noting(n)
        root.backward(np.ones_like(root.data))
        norms.update({id(n): float(np.linalg.norm(n.grad)) for n in leaves if n.grad is not None})
    finally:
        for n in order:
            if isinstance(n._op, Noting):
                n._op = n._op.op
        for n, g in zip(leaves, saved):
            n.grad = g
    return norms


def _nodes(root):
    """Forward-ordered nodes reachable from root, with the non-scalar constants they read."""
    order = engine._topological_order(root)
    seen, out = {id(n) for n in order}, []
    for n in order:
        for p in n._parents:
            if id(p) not in seen and p.size > 1:  # scalars are folded into the op's label
                seen.add(id(p))
                out.append(p)
        out.append(n)
    return out


def _rows(nodes):
    """{id(node): row}: a node one row below its lowest parent, a leaf one row above its first consumer."""
    row = {}
    for n in nodes:
        parents = [row[id(p)] for p in n._parents if id(p) in row]
        row[id(n)] = 1 + max(parents) if parents else 0
    for n in nodes:  # a leaf sits just above its first consumer, not at the far top
        if n._op is None:
            below = [row[id(c)] for c in nodes if any(p is n for p in c._parents)]
            row[id(n)] = max(0, min(below) - 1) if below else 0
    return row


def _label(node, names, norms):
    if node._op is not None:
        scalars = sum(p.size == 1 and not p.requires_grad for p in node._parents)
        title = node._op.name + (" (const)" if scalars else "")
    else:
        title = names.get(id(node), "parameter" if node.requires_grad else "constant")
    dtype = {"float32": "f32", "float64": "f64"}.get(str(node.dtype), str(node.dtype))
    lines = [title, f"{node.shape} {dtype}"]
    if id(node) in norms:
        lines.append(f"|g| {norms[id(node)]:.3g}")
    return lines


def graph_layout(root, names=None, grads=None, max_nodes=120, max_rows=40):
    """The boxes and edges to draw: ({key: (label lines, row, column, node count, wrong?)}, edges).

    grads: show gradient norms (default: when a leaf already has a .grad, i.e. after backward()).
    """
    names = {id(t): n for n, t in (names or {}).items()}
    nodes = _nodes(root)
    if grads is None:
        grads = any(n._op is None and n.grad is not None for n in nodes)
    norms = gradient_norms(root) if grads and root.size == 1 else {}
    row = _rows(nodes)
    summary = len(nodes) > max_nodes
    key = {id(n): (row[id(n)], n._op.name if n._op else "leaf") if summary else id(n) for n in nodes}
    boxes, edges = {}, set()
    for n in nodes:
        k = key[id(n)]
        if k not in boxes:
            boxes[k] = {"label": _label(n, names, norms), "row": row[id(n)], "count": 0, "node": n}
        boxes[k]["count"] += 1
        edges |= {(key[id(p)], k) for p in n._parents if id(p) in key}
    last = max(b["row"] for b in boxes.values())
    hidden = [k for k, b in boxes.items() if b["row"] < last - max_rows + 1]
    for k in hidden:
        del boxes[k]
    edges = {e for e in edges if e[0] in boxes and e[1] in boxes}
    for b in boxes.values():
        if b["count"] > 1:
            b["label"] = [f"{b['label'][0]} x{b['count']}"] + b["label"][1:2]
    _order_rows(boxes, edges)
    return boxes, edges, len(nodes), len(hidden)


def _order_rows(boxes, edges, sweeps=4):
    """Give each box a column: the mean column of its neighbours, sweeping down and up."""
    rows = {}
    for k, b in boxes.items():
        rows.setdefault(b["row"], []).append(k)
    width = max(len(r) for r in rows.values())
    place = lambda r: {k: (i + 0.5) * width / len(r) for i, k in enumerate(r)}  # noqa: E731
    column = {k: c for r in rows.values() for k, c in place(r).items()}
    up = {k: [a for a, b in edges if b == k] for k in boxes}
    down = {k: [b for a, b in edges if a == k] for k in boxes}
    for sweep in range(sweeps):
        links = up if sweep % 2 == 0 else down
        for r in sorted(rows, reverse=sweep % 2 == 1):
            rows[r].sort(key=lambda k: np.mean([column[j] for j in links[k]]) if links[k] else column[k])
            column.update(place(rows[r]))
    for k, b in boxes.items():
        b["column"] = column[k]


def draw_graph(root, path=None, names=None, highlight=None, grads=None, max_nodes=120,
               max_rows=40, title=None):
    """Draw the graph that produced `root` with matplotlib; save it to `path` if given.

    names: {name: Tensor}, e.g. dict(model.named_parameters()), to label leaves. highlight: a
    Tensor, or the gradient debugger's report (find_wrong_vjp), or True to run the debugger now;
    that node is drawn in red. With True and no wrong node, the engine's gradients are checked
    too (gradcheck.engine_agrees): if they are wrong, the figure says the engine is at fault.
    Returns the matplotlib Figure.
    """
    import matplotlib
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine_note = None
    if highlight is True:
        highlight = find_wrong_vjp(root)
        if highlight is None and engine_agrees(root) is False:
            engine_note = ENGINE_NOTE
    wrong = getattr(highlight, "node", highlight)
    boxes, edges, n_nodes, n_hidden = graph_layout(root, names, grads, max_nodes, max_rows)
    rows = max(b["row"] for b in boxes.values()) - min(b["row"] for b in boxes.values()) + 1
    width = max(b["column"] for b in boxes.values()) + 0.5
    fig, ax = plt.subplots(figsize=(max(6.0, 1.7 * width), max(3.0, 0.85 * rows + 1)))
    top = min(b["row"] for b in boxes.values())
    xy = {k: (b["column"], -(b["row"] - top)) for k, b in boxes.items()}
    for a, b in edges:
        (x0, y0), (x1, y1) = xy[a], xy[b]
        ax.annotate("", (x1, y1 + 0.22), (x0, y0 - 0.22), arrowprops=dict(arrowstyle="->", color="0.55", lw=0.8))
    for k, b in boxes.items():
        node = b["node"]
        bad = wrong is not None and node is wrong
        face = "#f4a6a6" if bad else "#fde9c9" if node._op is None and node.requires_grad else (
            "#e8e8e8" if node._op is None else "#dbe8f6")
        ax.text(*xy[k], "\n".join(b["label"]), ha="center", va="center", fontsize=7,
                fontweight="bold" if bad else "normal",
                bbox=dict(boxstyle="round,pad=0.3", fc=face, ec="#c00000" if bad else "0.4",
                          lw=2 if bad else 0.6))
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-rows + 0.4, 0.6)
    ax.axis("off")
    note = f"{n_nodes} nodes" + (f", grouped by op and row" if len(boxes) < n_nodes - n_hidden else "")
    note += f"; {n_hidden} boxes above the top row not drawn" if n_hidden else ""
    ax.set_title((title + "\n" if title else "") + note, fontsize=9)
    if engine_note:
        fig.text(0.5, 0.005, engine_note, ha="center", va="bottom", fontsize=8, color="#c00000", wrap=True)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def to_dot(root, names=None, highlight=None, grads=None):
    """The graph as Graphviz text (render with `dot -Tpng graph.dot -o graph.png`); no grouping."""
    wrong = getattr(highlight, "node", highlight)
    boxes, edges, _, _ = graph_layout(root, names, grads, max_nodes=float("inf"), max_rows=10 ** 9)
    ids = {k: f"n{i}" for i, k in enumerate(boxes)}
    lines = ["digraph minivae {", "  node [shape=box, style=\"rounded,filled\", fontsize=10];"]
    for k, b in boxes.items():
        color = "#f4a6a6" if wrong is not None and b["node"] is wrong else (
            "#dbe8f6" if b["node"]._op is not None else "#fde9c9")
        label = "\\n".join(line.replace('"', "'") for line in b["label"])
        lines.append(f'  {ids[k]} [label="{label}", fillcolor="{color}"];')
    lines += [f"  {ids[a]} -> {ids[b]};" for a, b in sorted(edges, key=lambda e: (ids[e[0]], ids[e[1]]))]
    return "\n".join(lines + ["}"]) + "\n"
