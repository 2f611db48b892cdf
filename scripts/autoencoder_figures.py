"""The figures of scripts/train_autoencoder.py: reconstructions, samples, filters, code units,
code usage and traversals, each for the models where it teaches something. Imported by the
script; not a script of its own.
"""
import numpy as np

from minivae import diagnostics, shapes
from minivae.engine import Tensor, no_grad
from minivae.run import plot_module

MAX_SHOWN = 0.25  # code_usage.png: a code taken by this fraction of the images, or more, is white


def make_figures(args, output_path, model, x_test, test, prior):
    """Reconstructions for all; samples, code units, code usage or traversals where they teach something."""
    plot = plot_module()
    if plot is None:
        return
    rng = np.random.default_rng([args.seed, 4])
    side = int(round(np.sqrt(x_test.shape[1])))
    image_shape = (side, side)  # 28 x 28 digits, 32 x 32 shapes
    with no_grad():
        plot.reconstructions(x_test[:10], model.reconstruct(x_test[:10]), output_path("reconstructions.png"), n=10,
                             image_shape=image_shape)
        if args.model in ("vae", "beta_vae", "iaf"):
            plot.image_grid(model.sample(64, rng), output_path("samples.png"), title="samples, z ~ N(0, I)",
                            image_shape=image_shape)
        if prior is not None:
            codes = prior.sample(64, rng)
            plot.image_grid(model.mean_image(model.decode_codes(codes)), output_path("samples.png"),
                            title="codes sampled from the GRU prior, decoded")
            code_usage_figure(model.codes(x_test), model.n_codes, test["code_usage"], output_path("code_usage.png"))
        if args.model in ("sparse", "ksparse", "contractive"):
            order = np.argsort(-test["code"].var(0))[:64]  # the most variable code units
            W = model.encoder.layers[0].W.data[:, order].T  # (64, 784): their filters (one-layer encoders)
            lo, hi = W.min(1, keepdims=True), W.max(1, keepdims=True)
            plot.image_grid((W - lo) / (hi - lo), output_path("filters.png"), title="encoder filters of the code units")
        if args.model in ("sparse", "ksparse"):  # what switching each unit on adds to the average code
            code = test["code"]
            order = np.argsort(-code.var(0))[:64]
            h = np.repeat(code.mean(0, keepdims=True), len(order) + 1, axis=0)  # row 0: the average
            h[np.arange(1, len(order) + 1), order] = np.percentile(code, 99, axis=0)[order]
            images = model.mean_image(model.decode(Tensor(h)))
            diff = images[1:] - images[0]
            lo, hi = diff.min(1, keepdims=True), diff.max(1, keepdims=True)
            plot.image_grid((diff - lo) / np.maximum(hi - lo, 1e-8), output_path("code_units.png"),
                            title="what each code unit adds to the average code's image")
        if args.model in ("vae", "beta_vae"):
            traversals(plot, output_path("traversals.png"), model, x_test, args.beta, image_shape)


def traversals(plot, path, model, x_test, beta, image_shape, n_rows=10):
    """One row per latent dimension, most KL first (at most n_rows): the first test image's
    posterior mean with that dimension moved from -3 to 3, decoded. A dimension whose KL is near
    0 nats carries nothing, and its row shows one image repeated."""
    mu, logvar = diagnostics.encode_all(model, x_test)
    kl = shapes.kl_per_dimension(mu, logvar)  # (latent,) nats per image, on the test images
    dims = np.argsort(-kl)[:n_rows]
    rows = shapes.traversal(lambda z: model.mean_image(model.decode(Tensor(z.astype(mu.dtype)))),
                            mu[0], dims, np.linspace(-3, 3, 9))
    plot.interpolation_grid(rows, path, row_labels=[f"z{j}  KL {kl[j]:.2f}" for j in dims], image_shape=image_shape,
                            title=f"traversals, z_j from -3 to 3, rows by KL (beta = {beta:g})")


def sweep_figure(runs, path):
    """MIG (both estimates) and test reconstruction error against beta (log axis), one point per
    run and a line through each beta's mean: the beta sweep's trade-off.
    runs: {name: {"beta", "mig", "mig_posterior", "test_rec"}}."""
    from minivae.plot import _new_figure, _save  # matplotlib is needed here, and only here
    betas = sorted({run["beta"] for run in runs.values()})
    fig = _new_figure((9.0, 3.4))
    axes = fig.subplots(1, 2)
    curves = (("mig_posterior", "MIG (q): from q(z|x)", axes[0], "C0"),
              ("mig", "MIG (hist): histogram of means", axes[0], "C1"),
              ("test_rec", "test reconstruction error", axes[1], "C0"))
    for key, label, ax, colour in curves:
        runs_with = [run for run in runs.values() if run.get(key) is not None]
        if not runs_with:
            continue
        ax.plot([run["beta"] for run in runs_with], [run[key] for run in runs_with], "o", color=colour, alpha=0.4)
        done = sorted({run["beta"] for run in runs_with})
        ax.plot(done, [np.mean([run[key] for run in runs_with if run["beta"] == b]) for b in done], "-",
                color=colour, label=f"{label}, mean (dots: seeds)")
    for ax, label in zip(axes, ("MIG (held-out shapes)", "test reconstruction error, nats")):
        ax.set_xscale("symlog", linthresh=1.0)  # a log axis that also shows beta = 0
        ax.set(xlabel="β", ylabel=label, xticks=betas, xticklabels=[f"{b:g}" for b in betas])
        ax.margins(y=0.3)  # room above the points for the legend
        ax.legend(fontsize="small", loc="upper left")
    fig.suptitle("β-VAE on the generated shapes: disentanglement against reconstruction")
    return _save(fig, path)


def code_usage_figure(idx, n_codes, usage, path):
    """code_usage.png: for each position l (a row) the fraction of test images whose code k_l is k.

    Per position, because a pooled histogram hides a collapsed code (vqvae.code_usage): a row with
    one bright cell is a position that says the same thing for every image.
    """
    from minivae.plot import _new_figure, _save  # matplotlib is there: plot_module() returned plot
    counts = np.stack([np.bincount(column, minlength=n_codes) for column in idx.T]) / len(idx)  # (L, K)
    fig = _new_figure((7.0, 0.4 * len(counts) + 1.4))
    ax = fig.add_subplot()
    shown = ax.imshow(counts, cmap="gray", vmin=0.0, vmax=MAX_SHOWN, aspect="auto", interpolation="nearest")
    ax.set(xlabel="code k", ylabel="position l", yticks=range(len(counts)),
           yticklabels=[str(l + 1) for l in range(len(counts))],
           title=f"test codes per position: {min(usage['codes_used_per_position'])} to "
                 f"{max(usage['codes_used_per_position'])} of {n_codes} used; {usage['codes_used']} in all")
    fig.colorbar(shown, ax=ax, label="fraction of images", extend="max")
    return _save(fig, path)
