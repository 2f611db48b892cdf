"""The benchmark script and its peers, float32 all the way, and safe in-place gradients.

The benchmark runs at a tiny size on synthetic data (a few seconds); with torch installed, the
`slow` test runs every framework (pytest -m slow). The hand-written NumPy models must compute
the engine's loss and gradients, or the benchmark's floor would time a different function.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import minivae.engine as engine
import minivae.ops as ops
from minivae import Tensor, data
from minivae.allocator import reuse_freed_memory
from minivae.models import MLPVAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))  # benchmark.py imports its siblings
import bench_measure  # noqa: E402
import bench_numpy  # noqa: E402
import bench_workloads  # noqa: E402
import benchmark  # noqa: E402

TINY = ["--synthetic", "--mlp-examples", "512", "--mlp-steps", "5", "--gru-steps", "5", "--gru-large-steps", "5",
        "--sentences", "300", "--check-steps", "3", "--warmup", "1", "--threads", "1"]
TEXT_WORKLOADS = ["gru", "gru_large"]


def _check_report(report, frameworks, path):
    assert json.loads(Path(path).read_text()) == json.loads(json.dumps(report))
    machine = report["machine"]
    assert machine["threads"] == 1 and machine["blas"] and machine["versions"]["numpy"] == np.__version__
    for workload in benchmark.WORKLOADS:
        speed, section = "sec_per_epoch" if workload == "mlp" else "tokens_per_sec", report[workload]
        assert section[f"gemm_bound_{speed}"] > 0
        for name in benchmark.FRAMEWORKS:
            r = section[name]
            if name not in frameworks:
                assert r is None  # null in the JSON
                continue
            assert r[speed] > 0 and r["peak_rss_mb"] >= r["setup_rss_mb"] > 10, (workload, name)
            assert r["timed_steps"] == 4 and len(r["losses"]) == 3
            assert all(np.isfinite(r["losses"]))
            if workload == "mlp":  # per image, so it falls as the model trains (gru's depends on lengths)
                assert r["losses"][0] > r["losses"][-1]
        # the agreement is computed from the losses each framework reported, step by step
        ref = section["minivae"]["losses"]
        for name in frameworks[1:]:
            a = section["loss_agreement"][name]
            expected = max(abs(x - y) / abs(x) for x, y in zip(ref, section[name]["losses"]))
            assert a["steps"] == 3 and a["max_rel_diff"] == pytest.approx(expected, abs=1e-15)
            assert a["agree"] and a["max_rel_diff"] < 1e-4  # same function, float32 arithmetic
        assert set(section["loss_agreement"]) == set(frameworks[1:])
    wanted = [t for t in benchmark.TARGETS if t[2] in frameworks]
    assert [(t["name"], t["target"]) for t in report["targets"]] == [(t[0], f"<= {t[3]}") for t in wanted]
    assert all(t["met"] == (t["ratio"] <= float(t["target"][3:])) for t in report["targets"])


def test_tiny_benchmark_run_writes_every_number(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = benchmark.main(TINY + ["--frameworks", "minivae", "numpy", "autograd", "--out", str(out)])
    _check_report(report, ["minivae", "numpy", "autograd"], out)
    for workload in benchmark.WORKLOADS:  # the hand-written floor also says how long its optimiser took
        r = report[workload]["numpy"]
        assert 0 < r["optimizer_seconds"] < r["seconds"]
        # every framework's worker ran with the same allocator setting
        assert {report[workload][f]["reuse_freed_memory"] for f in ("minivae", "numpy", "autograd")} == {
            reuse_freed_memory()}
    assert report["settings"]["reuse_freed_memory"] is True
    assert benchmark.parse_args(["--default-malloc"]).default_malloc
    printed = capsys.readouterr().out
    assert "extrapolated to an epoch" in printed and "minivae vs autograd max relative difference" in printed
    assert "gru hand-written NumPy without its Adam:" in printed and "tokens/s" in printed
    assert "gru_large hand-written NumPy without its Adam:" in printed
    assert "gru_large data: toy corpus with 10 topics" in printed and "length-bucketed" in printed
    # one table, every framework side by side, all three workloads, the headline targets below it
    assert "NumPy by hand" in printed and "HIPS autograd" in printed and "PyTorch" not in printed
    lines = printed.splitlines()
    assert sum(line.startswith("  minivae time / theirs") for line in lines) == 3
    assert sum(line.startswith("  peak RSS MB") for line in lines) == 3
    assert "target mlp time vs hand-written NumPy" in printed and "target gru time vs hand-written NumPy" in printed
    assert "target gru_large time vs PyTorch" not in printed  # torch did not run


def _gradients_by_minivae_and_by_hand(workload, batch, job):
    """(loss, gradients) of one step of a benchmark model from minivae's engine and from the hand code."""
    if workload == "mlp":
        model = bench_workloads.minivae_mlp(0)
        objective = model.loss(job["x"][batch[0]], batch[1])[0]
        by_hand = bench_numpy.mlp_forward_backward(job["x"], [p.data for p in model.parameters()])
    else:
        model = bench_workloads.minivae_sentence_vae(job["n_vocab"], 0, bench_workloads.CONFIGS[workload])
        objective = model.loss(batch)
        by_hand = bench_numpy.sentence_vae_forward_backward({n: p.data for n, p in model.named_parameters()})
    objective.backward()
    loss, grads = by_hand(batch)
    assert [w for w, _ in grads] == [p.data for p in model.parameters()]  # the same arrays, in order
    return (objective.data, [p.grad for p in model.parameters()]), (loss, [g for _, g in grads])


def _one_step(workload, bucket=50):
    job = {"workload": workload, "n_steps": 2, "seed": 0, "sentences": 200, "mlp_examples": 300, "data_dir": None,
           "bucket": bucket}
    if workload == "mlp":
        job["x"], steps, _ = bench_workloads.mlp_workload(job)
    else:
        job["n_vocab"], steps, _ = bench_workloads.text_workload(job)
    return steps[0], job


def _gradient_matches(grads, hand_grads):
    """Per parameter: does the hand-derived gradient equal the engine's (float32 accuracy)?"""
    out = []
    for g, h in zip(grads, hand_grads):
        assert h.dtype == np.float32 and h.shape == g.shape
        scale = np.abs(g).max()
        out.append(bool(scale > 0 and np.abs(h - g).max() <= 1e-4 * scale))
    return out


@pytest.mark.parametrize("workload, bucket", [("mlp", 0), ("gru", 50), ("gru_large", 0)])
def test_hand_written_numpy_gradients_equal_minivae_engine(workload, bucket):
    """The benchmark's hand-derived floor computes the same loss and gradients as the engine."""
    batch, job = _one_step(workload, bucket)
    if workload != "mlp":  # padded steps (random batches: many) must get no gradient, in both
        assert (batch["mask"] == 0).any() or bucket
    (loss, grads), (hand_loss, hand_grads) = _gradients_by_minivae_and_by_hand(workload, batch, job)
    assert hand_loss.dtype == np.float32 and hand_loss == pytest.approx(float(loss), rel=1e-5)
    assert all(_gradient_matches(grads, hand_grads))


@pytest.mark.parametrize("workload", ["mlp", "gru", "gru_large"])
def test_the_gradient_comparison_catches_a_wrong_hand_gradient(workload, monkeypatch):
    """Negative controls: a 0.1% error in one gradient, or KL's term left out of the latent layer's."""
    batch, job = _one_step(workload)
    (_, grads), (_, hand_grads) = _gradients_by_minivae_and_by_hand(workload, batch, job)
    hand_grads[-1] = hand_grads[-1] * np.float32(1.001)
    assert _gradient_matches(grads, hand_grads)[-1] is False

    def without_kl(g_z, mu, std, eps, n):  # the gradient through z alone
        return np.concatenate([g_z, g_z * eps * (0.5 * std)], axis=1)
    monkeypatch.setattr(bench_numpy, "latent_gradient", without_kl)
    (loss, grads), (hand_loss, hand_grads) = _gradients_by_minivae_and_by_hand(workload, batch, job)
    assert hand_loss == pytest.approx(float(loss), rel=1e-5)  # the forward pass is still right
    assert not all(_gradient_matches(grads, hand_grads))


def test_benchmark_data_never_defaults_outside_the_repository(tmp_path, monkeypatch, capsys):
    """No --data-dir: minivae's cache; offline with nothing cached, synthetic images, said in one line."""
    assert benchmark.parse_args([]).data_dir is None
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path))

    def offline(fname, *args):
        raise data.DataUnavailable(f"could not download {fname}: offline")
    monkeypatch.setattr(data, "_download", offline)
    assert benchmark.find_images(benchmark.parse_args([])) is None
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "Fashion-MNIST unavailable" in printed[0] and "synthetic" in printed[0]
    assert benchmark.find_images(benchmark.parse_args(["--synthetic"])) is None
    with pytest.raises(SystemExit, match="not found"):  # a folder the user named must hold the files
        benchmark.find_images(benchmark.parse_args(["--data-dir", str(tmp_path)]))


@pytest.mark.slow
def test_tiny_benchmark_run_with_torch(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    _check_report(benchmark.main(TINY + ["--out", str(out)]), list(benchmark.FRAMEWORKS), out)


def test_loss_agreement_flags_a_disagreement_and_a_missing_loss():
    ok = benchmark.loss_agreement({"minivae": [10.0, 9.0], "torch": [10.0, 9.0 * (1 + 1e-4)]}, rtol=2e-3)
    assert ok["torch"]["agree"] and ok["torch"]["max_rel_diff"] == pytest.approx(1e-4)
    bad = benchmark.loss_agreement({"minivae": [10.0, 9.0], "autograd": [10.0, 9.1], "torch": None}, rtol=2e-3)
    assert not bad["autograd"]["agree"] and bad["autograd"]["max_rel_diff"] == pytest.approx(0.1 / 9)
    assert "torch" not in bad
    with pytest.raises(ValueError, match="autograd reported 1 losses, minivae 2"):
        benchmark.loss_agreement({"minivae": [10.0, 9.0], "autograd": [10.0]}, rtol=2e-3)


def test_benchmark_rejects_bad_arguments():
    for bad in (["--threads", "0"], ["--warmup", "200", "--gru-steps", "100"], ["--check-steps", "50", "--quick"],
                ["--gru-large-steps", "0"], ["--bucket", "-1"], ["--corpus", "no/such/file.txt"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args(bad)


def test_gemm_shapes_of_one_step_chain_together():
    """Each product's inner sizes match, and the counts are what one training step needs."""
    assert len(bench_measure.mlp_gemms(128, bench_workloads.MLP)) == 4 + 4 + 3  # forward, weight and input gradients
    T = 7
    gru = bench_measure.gru_gemms(32, T, 2000, bench_workloads.GRU, 32 * (T + 1))
    assert sum(s[:3] == (32, 128, 384) for s in gru) == T + (T + 1)   # one recurrent product per step
    assert sum(s[:3] == (32, 384, 128) for s in gru) == T + (T + 1)   # and one back through each step
    flops = sum(2 * m * k * n for m, k, n, _ in gru)
    assert flops > 3 * 2 * 32 * (T + 1) * 128 * 2000  # the vocabulary products dominate


# ------------------------------------------------------------------ float32 all the way
@pytest.fixture
def dtype_log(monkeypatch):
    """Every primitive's output and every VJP's gradients, as (op, what, dtype) triples."""
    log = []
    for name, prim in engine.PRIMITIVES.items():
        def forward(*args, _f=prim.forward, _name=name, _saves=prim.saves, **params):
            out = _f(*args, **params)
            log.append((_name, "output", np.asarray(out[0] if _saves else out).dtype))  # (ans, saved) if it saves
            return out
        monkeypatch.setattr(prim, "forward", forward)
    vjp = engine.Primitive.vjp

    def logged_vjp(self, *args):
        grads = vjp(self, *args)
        log.extend((self.name, "gradient", np.asarray(g).dtype) for g in grads if g is not None)
        return grads
    monkeypatch.setattr(engine.Primitive, "vjp", logged_vjp)
    return log


def _assert_float32(log, params):
    floats = [(op, what, dt) for op, what, dt in log if dt.kind == "f"]
    assert {what for _, what, _ in floats} == {"output", "gradient"} and len(floats) > 40
    assert not [f for f in floats if f[2] != np.float32], "float32 path upcasts"
    assert all(p.grad is not None and p.grad.dtype == np.float32 for p in params)


def test_mlp_vae_training_step_stays_float32(dtype_log):
    rng = np.random.default_rng(0)
    model = MLPVAE(rng=rng)
    x = rng.random((16, 784), dtype=np.float32)
    eps = rng.standard_normal((16, 20)).astype(np.float32)
    objective, _ = model.loss(x, eps, beta=0.5, free_bits=0.1)
    objective.backward()
    assert {op for op, _, _ in dtype_log} >= {"matmul", "relu", "softplus", "exp", "maximum"}
    _assert_float32(dtype_log, model.parameters())


def test_sentence_vae_training_step_stays_float32(dtype_log):
    from minivae import text
    n_steps = 2
    job = {"workload": "gru", "n_steps": n_steps, "seed": 0, "sentences": 200}
    n_vocab, steps, _ = bench_workloads.text_workload(job)
    model = bench_workloads.minivae_sentence_vae(n_vocab, 0)
    assert text.PAD_ID in steps[0]["dec_target"] or steps[0]["mask"].all()
    model.loss(steps[0]).backward()
    assert {op for op, _, _ in dtype_log} >= {"gru_sequence", "softmax_cross_entropy", "getitem", "tanh", "matmul"}
    _assert_float32(dtype_log, model.parameters())


# ------------------------------------------------------------------ in-place gradients stay separate
def test_a_new_array_returned_for_two_inputs_is_not_shared_when_accumulating():
    """The engine adds into arrays a VJP created, unless the VJP returned the same one twice."""
    @engine.primitive
    def plus(x, y):
        return x + y
    plus.defvjp_all(lambda g, ans, x, y: (lambda a: (a, a))(g * 1.0))
    try:
        x, y = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3), requires_grad=True)
        (plus(x, y) + x * 2.0).backward(np.array([1.0, 2.0, 3.0]))  # x gets a second gradient
        np.testing.assert_array_equal(x.grad, [3.0, 6.0, 9.0])
        np.testing.assert_array_equal(y.grad, [1.0, 2.0, 3.0])
        x.grad *= 0  # a leaf's gradient is its own (gradient clipping scales it in place)
        np.testing.assert_array_equal(y.grad, [1.0, 2.0, 3.0])
    finally:
        del engine.PRIMITIVES["plus"]


def test_in_place_accumulation_leaves_inputs_and_seed_alone():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    w = Tensor(np.array([0.5, 0.5, 0.5]), requires_grad=True)
    seed = np.array([1.0, 1.0, 1.0])
    y = ops.exp(x) * w + x * w + ops.negative(x)  # x and w both fan out
    y.backward(seed)
    np.testing.assert_array_equal(seed, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(x.grad, np.exp(x.data) * 0.5 + 0.5 - 1)
    np.testing.assert_allclose(w.grad, np.exp(x.data) + x.data)
    np.testing.assert_array_equal(w.data, [0.5, 0.5, 0.5])


def test_gru_large_reads_a_corpus_file_and_keeps_the_papers_vocabulary(tmp_path):
    """--corpus: the file's words (fewer than 10,000 here) under an output layer of 10,000."""
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(f"w{i % 7} w{i % 5} and w{i % 3} ." for i in range(120)) + "\n")
    job = {"workload": "gru_large", "n_steps": 3, "seed": 0, "corpus": str(corpus), "bucket": 0}
    n_vocab, steps, source = bench_workloads.text_workload(job)
    assert n_vocab == 10000 and str(corpus) in source and "random (not length-bucketed)" in source
    assert len(steps) == 3 and all(len(b["lengths"]) == 32 for b in steps)
    assert all((b["dec_target"] < 20).all() for b in steps)  # ids of the file's own vocabulary
