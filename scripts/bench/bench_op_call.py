"""What one op call costs: a small op's forward and backward in minivae beside the same NumPy lines.

    python scripts/bench/bench_op_call.py
    python scripts/bench/bench_op_call.py --size 64 --repeats 7 --out runs/op_call.json

The op is multiply on two (size, size) float32 arrays, as `x * y` inside a model. Four ways:
  numpy forward             x * y on the arrays
  minivae forward, no_grad  the same through ops.multiply, recording nothing (evaluation)
  numpy forward + VJP       x * y, then g * y and g * x: the arithmetic of a backward pass
  minivae forward+backward  (x * y).backward(g) on tensors that require gradients, grads cleared
The difference between a minivae row and the NumPy row under it is what the engine adds per op
call: binding the parameters, wrapping the inputs, recording the node, walking the graph.
Each figure is the median over --repeats rounds of the mean CPU time (time.process_time, which
other processes on a busy machine disturb far less than wall time) of --number calls.
"""
import argparse
import os
import time
import timeit

import numpy as np

from minivae import Tensor, no_grad, ops
from minivae.fileio import write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=8, help="the arrays are (size, size) float32")
    p.add_argument("--number", type=int, default=20000, help="calls per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    p.add_argument("--out", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if min(args.size, args.number, args.repeats) < 1:
        p.error("--size, --number and --repeats must be >= 1")
    return args


def cases(size):
    """name -> a function of no arguments doing one call of that kind."""
    rng = np.random.default_rng(0)
    x, y, g = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(3))
    tx, ty = Tensor(x, requires_grad=True), Tensor(y, requires_grad=True)
    cx, cy = Tensor(x), Tensor(y)

    def minivae_no_grad():
        with no_grad():
            ops.multiply(cx, cy)

    def numpy_forward_vjp():
        x * y
        g * y
        g * x

    def minivae_forward_backward():
        tx.grad = ty.grad = None
        ops.multiply(tx, ty).backward(g)

    return {"numpy forward": lambda: x * y, "minivae forward, no_grad": minivae_no_grad,
            "numpy forward + VJP": numpy_forward_vjp, "minivae forward+backward": minivae_forward_backward}


def main(argv=None):
    args = parse_args(argv)
    results = {}
    for name, fn in cases(args.size).items():
        rounds = timeit.repeat(fn, number=args.number, repeat=args.repeats, timer=time.process_time)
        results[name] = float(np.median(rounds)) / args.number * 1e6  # microseconds per call
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"multiply on ({args.size}, {args.size}) float32, CPU time, median of {args.repeats} rounds of "
          f"{args.number} calls, load average {load:.2f}")
    for name, us in results.items():
        print(f"{name:<28}{us:8.2f} us")
    print(f"minivae forward+backward / numpy forward + VJP: "
          f"{results['minivae forward+backward'] / results['numpy forward + VJP']:.1f}")
    if args.out:
        write_json(args.out, {"size": args.size, "load": load, "microseconds": results})
    return results


if __name__ == "__main__":
    main()
