"""The MNIST training script end to end, on the MNIST test set that ships with minivae.

Every test here runs offline: MINIVAE_DATA points at an empty folder and downloads are off, so
the script takes its bundled-data fallback, exactly as on a laptop without a network.
"""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from minivae import schedules
from minivae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivae.layers import MLP
from minivae.models import MLPVAE
from minivae.saved import load_model
from minivae.fast import FusedAdam

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_mnist_vae.py"
sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling digit_classifier, as when run
import digit_classifier  # noqa: E402  (needs scripts/ on the path)
spec = importlib.util.spec_from_file_location("train_mnist_vae", SCRIPT)
train_mnist_vae = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_mnist_vae)

TINY = ["--hidden", "32", "--latent", "3", "--batch-size", "200", "--no-progress", "--no-download"]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("minivae.data.DATASETS", {
        name: {**spec, "mirrors": ["http://127.0.0.1:9/"]}
        for name, spec in __import__("minivae.data", fromlist=["DATASETS"]).DATASETS.items()})


def test_tiny_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    main_args = TINY + ["--epochs", "2", "--out", str(out), "--iw-samples", "8", "--iw-examples", "50",
                        "--beta-schedule", "cyclical", "--beta-params", "n_cycles=2,ratio=0.5",
                        "--free-bits", "0.05"]
    history = train_mnist_vae.main(main_args)
    printed = capsys.readouterr().out
    assert "bundled MNIST test set: 8000 train / 2000 held-out" in printed
    assert "epoch   2/2" in printed and "active units" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["fallback"] is True and metrics["data"]["n_train"] == 8000
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for key in ("train_neg_elbo", "test_neg_elbo", "test_rec", "test_kl", "beta", "seconds"):
        assert all(np.isfinite(e[key]) for e in metrics["epochs"]), key
    assert metrics["test_iw_nll"] is not None and np.isfinite(metrics["test_iw_nll"])
    assert 0 <= metrics["active_units"] <= 3 and metrics["config"]["latent"] == 3
    assert metrics["epochs"] == history
    for png in ("samples", "reconstructions", "curves", "beta_schedule", "latent", "interpolation",
                "kl_per_dim"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    state = load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 2 and state["step"] == 2 * 40
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written files


def test_resume_is_exactly_a_continued_run(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_mnist_vae.main(TINY + ["--epochs", "2", "--out", str(straight), "--no-plots",
                                 "--binarize", "dynamic"])
    train_mnist_vae.main(TINY + ["--epochs", "1", "--out", str(split), "--no-plots", "--binarize", "dynamic"])
    history = train_mnist_vae.main(TINY + ["--epochs", "2", "--out", str(split), "--no-plots",
                                           "--binarize", "dynamic", "--resume", str(split / "checkpoint.npz")])
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert a["step"] == b["step"] == 80
    for name in a["params"]:
        np.testing.assert_array_equal(a["params"][name], b["params"][name], err_msg=name)
    drop_time = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert drop_time(a["history"]) == drop_time(b["history"]) == drop_time(history)


def test_resume_refuses_a_different_architecture_or_a_corrupt_file(tmp_path, capsys):
    run = tmp_path / "run"
    train_mnist_vae.main(TINY + ["--epochs", "1", "--out", str(run), "--no-plots"])
    ckpt = run / "checkpoint.npz"
    with pytest.raises(SystemExit, match=r"different latent \(3 there, 4 here\)"):
        train_mnist_vae.main(TINY[:2] + ["--latent", "4"] + TINY[4:] + ["--epochs", "2", "--out", str(run),
                                                                        "--resume", str(ckpt)])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(ckpt.read_bytes()[:1000])  # a truncated copy
    with pytest.raises(SystemExit) as err:  # found before any data is read: a flag error (exit code 2)
        train_mnist_vae.main(TINY + ["--epochs", "2", "--out", str(run), "--resume", str(bad)])
    assert err.value.code == 2 and "not a readable minivae checkpoint" in capsys.readouterr().err


def test_nan_stops_training_naming_step_and_term_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_loss = MLPVAE.loss
    calls = {"n": 0}

    def loss_that_goes_nan(self, *args, **kwargs):
        objective, stats = real_loss(self, *args, **kwargs)
        calls["n"] += len(args[0]) == 200  # count training batches, not evaluation ones
        if calls["n"] == 45 and len(args[0]) == 200:  # step 44, in epoch 2 (40 steps per epoch)
            stats = {**stats, "kl": float("nan")}
        return objective, stats
    monkeypatch.setattr(MLPVAE, "loss", loss_that_goes_nan)
    with pytest.raises(SystemExit, match="step 44: the kl term is nan"):
        train_mnist_vae.main(TINY + ["--epochs", "3", "--out", str(run), "--no-plots"])
    assert load_checkpoint(run / "checkpoint.npz")["epoch"] == 1  # the last good one survives


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--lr", "-1"], ["--hidden", "0"],
                                 ["--beta-schedule", "cyclical", "--beta-params", "ratio=2"],
                                 ["--beta-params", "x0"]])
def test_bad_hyperparameters_are_refused_clearly(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        train_mnist_vae.main(TINY + bad + ["--out", str(tmp_path)])
    message = str(err.value) + capsys.readouterr().err
    assert err.value.code != 0 and ("must be" in message or "beta" in message)


@pytest.mark.parametrize("x_logvar", ["learned-pixel", "learned-scalar", "-1.5"])
def test_gaussian_likelihood_runs_end_to_end(x_logvar, tmp_path):
    """The Gaussian decoder's means are unbounded: the figures show them clipped, and the run
    finishes with every output. Its -ELBO is in nats of a density, normalising constant included."""
    out = tmp_path / "run"
    plots = [] if x_logvar == "learned-pixel" else ["--no-plots"]  # the figures once: they take most of the time
    history = train_mnist_vae.main(TINY + plots + ["--epochs", "1", "--latent", "2", "--likelihood", "gaussian",
                                                   "--x-logvar", x_logvar, "--out", str(out)])
    for png in [] if plots else ("samples", "reconstructions", "interpolation", "latent_grid", "curves"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    params = load_checkpoint(out / "checkpoint.npz")["params"]
    learned = {"learned-scalar": (), "learned-pixel": (784,)}
    assert (params["x_logvar"].shape if "x_logvar" in params else None) == learned.get(x_logvar)
    assert np.isfinite(history[-1]["test_neg_elbo"])
    saved = json.loads((out / "metrics.json").read_text())["config"]["x_logvar"]
    assert saved == (x_logvar if x_logvar in learned else float(x_logvar))


def test_conditional_vae_writes_one_row_per_class_and_resumes(tmp_path):
    out = tmp_path / "cvae"
    history = train_mnist_vae.main(TINY + ["--epochs", "1", "--conditional", "--out", str(out)])
    assert (out / "class_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "interpolation.png").exists()  # interpolating z across two labels is not defined
    state = load_checkpoint(out / "checkpoint.npz")
    assert state["config"]["conditional"] is True and state["config"]["model"] == "mlp_vae"
    assert state["params"]["encoder.layers.0.W"].shape == (794, 32)  # 784 pixels + 10 label entries
    assert state["params"]["decoder.layers.0.W"].shape == (13, 32)   # 3 latents + 10 label entries
    assert state["params"]["decoder.layers.1.W"].shape == (32, 784)  # the label joins the decoder's input only
    assert np.isfinite(history[-1]["test_neg_elbo"])
    control = json.loads((out / "metrics.json").read_text())["label_control"]
    assert len(control["per_class"]) == 10 and control["overall"] == pytest.approx(np.mean(control["per_class"]))
    assert 0.8 < control["classifier_test_accuracy"] <= 1
    again = train_mnist_vae.main(TINY + ["--epochs", "2", "--conditional", "--out", str(out), "--no-plots",
                                         "--resume", str(out / "checkpoint.npz")])
    assert len(again) == 2
    with pytest.raises(SystemExit, match="different conditional"):
        train_mnist_vae.main(TINY + ["--epochs", "3", "--out", str(out), "--resume", str(out / "checkpoint.npz")])
    with pytest.raises(SystemExit, match=r"different label_into \(input there, every-layer here\)"):
        train_mnist_vae.main(TINY + ["--epochs", "3", "--conditional", "--label-into", "every-layer", "--out", str(out),
                                     "--resume", str(out / "checkpoint.npz")])


@pytest.mark.slow  # the script's default conditional run and its classifier: a minute of training
def test_a_conditional_vae_obeys_its_label_and_the_check_can_fail(tmp_path):
    """The script's default conditional run on the bundled digits draws samples that its classifier
    reads as their label; the same model with the decoder's label weights zeroed (a decoder that
    ignores its label, as a CVAE whose z carries the class behaves) fails the same check."""
    out = tmp_path / "cvae"
    train_mnist_vae.main(["--conditional", "--no-download", "--no-progress", "--no-plots", "--out", str(out)])
    control = json.loads((out / "metrics.json").read_text())["label_control"]
    assert control["overall"] >= 0.8, control  # chance is 0.1; the classifier itself is right ~93% of the time

    model = load_model(out / "checkpoint.npz")
    reading = model.decoder.layers if model.label_into == "every-layer" else model.decoder.layers[:1]
    for layer in reading:
        layer.W.data[-10:] = 0.0  # the rows that multiply the one-hot label
    clf = MLP(digit_classifier.SIZES, "relu", np.random.default_rng(0))
    clf.load_state_dict(load_checkpoint(out / "classifier.npz")["params"])
    deaf = digit_classifier.label_control(clf, model, np.random.default_rng(1))
    assert deaf["overall"] < 0.2, deaf  # one image distribution for every label: 1/10 on average over the labels


@pytest.mark.parametrize("bad, message", [
    (["--x-logvar", "-1"], "--x-logvar sets the variance of --likelihood gaussian"),
    (["--likelihood", "gaussian", "--x-logvar", "learned"], "expected a finite number, got 'learned'"),
    (["--conditional", "--iw-samples", "5"], "drop it with --conditional"),
    (["--iw-train", "5", "--free-bits", "0.1"], "has no free bits: drop --free-bits"),
    (["--iw-train", "0"], "--iw-train must be >= 1"),
    (["--time-budget", "-1"], "--time-budget must be >= 0"),
    (["--lr-schedule", "step"], "invalid choice: 'step'"),
    (["--warmup-steps", "-5"], "--warmup-steps must be >= 0")])
def test_likelihood_and_conditional_flags_are_checked(bad, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        train_mnist_vae.main(TINY + bad + ["--out", str(tmp_path / "run")])
    assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_iw_training_cosine_schedule_and_warmup(tmp_path):
    """--iw-train 4 trains on the importance-weighted bound; the learning rate follows the cosine
    decay over the run's steps after a linear warm-up; every epoch records its last lr."""
    out = tmp_path / "iw"
    history = train_mnist_vae.main(TINY + ["--epochs", "2", "--iw-train", "4", "--lr-schedule", "cosine",
                                           "--warmup-steps", "30", "--out", str(out), "--no-plots"])
    steps = 40  # 8,000 bundled training images in batches of 200
    assert [e["steps"] for e in history] == [steps, 2 * steps]
    expected = [schedules.learning_rate("cosine", 1e-3, (s - 1) / (2 * steps), s - 1, 30) for s in (steps, 2 * steps)]
    np.testing.assert_allclose([e["lr"] for e in history], expected, rtol=1e-12)
    assert history[1]["lr"] < 1e-5 and all(np.isfinite(e["test_neg_elbo"]) for e in history)
    assert json.loads((out / "metrics.json").read_text())["config"]["iw_train"] == 4


def test_time_budget_stops_training_and_still_evaluates(tmp_path, capsys):
    """A budget far shorter than an epoch ends the first epoch early; the run is evaluated and
    saved as usual, and says why it stopped."""
    out = tmp_path / "budget"
    history = train_mnist_vae.main(TINY + ["--epochs", "50", "--time-budget", "0.0005", "--out", str(out),
                                           "--no-plots", "--lr-schedule", "burda", "--iw-samples", "4", "--output-bias", "data",
                                           "--iw-examples", "20"])
    printed = capsys.readouterr().out
    assert len(history) == 1 and 1 <= history[0]["steps"] < 40  # 0.03 s: a few steps, not the whole epoch
    assert "time budget of 0.0005 min used after 1 epochs" in printed and "IW evaluation 100%" in printed
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["test_iw_nll"])
    assert load_checkpoint(out / "checkpoint.npz")["step"] == history[0]["steps"]


def test_the_time_budget_counts_resumed_epochs_and_the_epoch_in_progress(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(train_mnist_vae.time, "perf_counter", lambda: clock[0])
    budget = train_mnist_vae.TimeBudget(1.0, history=[{"seconds": 30.0}, {"seconds": 15.0}])
    assert budget.used() == pytest.approx(45 / 60) and not budget.is_over()
    budget.start_epoch()
    clock[0] += 15.0  # the epoch in progress reaches the minute
    assert budget.used() == pytest.approx(1.0) and budget.is_over()
    assert budget.end_epoch() == pytest.approx(15.0) and budget.spent == pytest.approx(60.0)
    unlimited = train_mnist_vae.TimeBudget(0.0, history=[{"seconds": 1e9}])
    assert unlimited.used() == 0.0 and not unlimited.is_over()


def test_learning_on_bundled_digits(tmp_path):
    """Real training on real digits must beat, by far, the best model that ignores z.

    That model is a product of per-pixel Bernoullis with the training set's mean intensities;
    its held-out negative log-likelihood is computed here independently of minivae's model.
    """
    from minivae.data import load_train_test
    with pytest.warns(UserWarning, match="bundled"):
        x_train, _, x_test, _, _ = load_train_test("mnist", download=False, dtype=np.float64)
    p = np.clip(x_train.mean(axis=0), 1e-6, 1 - 1e-6)
    baseline = -np.mean(np.sum(x_test * np.log(p) + (1 - x_test) * np.log(1 - p), axis=1))  # ~204 nats

    history = train_mnist_vae.main(["--epochs", "3", "--no-progress", "--no-download", "--no-plots",
                                    "--hidden", "200", "--out", str(tmp_path)])
    scores = [h["test_neg_elbo"] for h in history]
    assert scores == sorted(scores, reverse=True), scores  # improves every epoch
    assert scores[-1] < 0.9 * baseline, (scores, baseline)  # an upper bound on NLL, 10% below it
    assert history[-1]["test_kl"] > 1.0  # and it got there by using z


# ------------------------------------------------------------------ checkpoint files
def test_checkpoint_round_trip_and_damage(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, params={"W": np.arange(6.0, dtype=np.float32).reshape(2, 3)},
                    optimizer={"m.0": np.zeros(3), "t": np.array([4]), "lr": 1e-3}, step=7,
                    config={"hidden": [400], "name": "x"}, rng=np.random.default_rng(0).bit_generator.state)
    state = load_checkpoint(path)
    assert state["step"] == 7 and state["config"] == {"hidden": [400], "name": "x"}
    assert state["params"]["W"].dtype == np.float32 and state["params"]["W"][1, 2] == 5
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    assert rng.random() == np.random.default_rng(0).random()

    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(2))  # a valid archive that is not ours
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "other.npz")


def test_failed_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, step=1)
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, step=2)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_a_nan_gradient_with_a_finite_loss_stops_like_the_nan_stop(tmp_path, monkeypatch):
    """The optimiser refuses a step whose gradients are not finite; the script stops cleanly,
    naming the step and the parameter, and keeps the last good checkpoint."""
    run = tmp_path / "run"
    real_step = FusedAdam.step
    calls = {"n": 0}

    def step_with_a_nan_gradient(self):
        calls["n"] += 1
        if calls["n"] == 45:  # step 44, in epoch 2 (40 steps per epoch)
            self.params[0].grad[0] = np.nan
        real_step(self)
    monkeypatch.setattr(FusedAdam, "step", step_with_a_nan_gradient)
    with pytest.raises(SystemExit, match=r"step 44: params\[0\] .* NaN or infinite gradient entries; no "
                                         r"parameter was updated.*Last good checkpoint: .*checkpoint.npz"):
        train_mnist_vae.main(TINY + ["--epochs", "3", "--out", str(run), "--no-plots"])
    assert load_checkpoint(run / "checkpoint.npz")["epoch"] == 1
