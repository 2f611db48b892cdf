"""The figures of scripts/train_autoencoder.py: reconstructions, samples, filters, code units,
code usage and traversals, each for the models where it teaches something. Imported by the
script; not a script of its own.
"""
import numpy as np

from minivae import shapes
from minivae.engine import Tensor, no_grad
from minivae.run import plot_module


def make_figures(args, output_path, model, x_test, test, prior):
    """Reconstructions for all; samples, code units, code usage or traversals where they teach something."""
    plot = plot_module()
    if plot is None:
        return
    from minivae import charts  # matplotlib is there: plot_module() returned plot
    rng = np.random.default_rng([args.seed, 4])
    with no_grad():
        plot.reconstructions(x_test[:10], model.reconstruct(x_test[:10]), output_path("reconstructions.png"), n=10)
        if args.model in ("vae", "beta_vae", "iaf"):
            plot.image_grid(model.sample(64, rng), output_path("samples.png"), title="samples, z ~ N(0, I)")
        if prior is not None:
            codes = prior.sample(64, rng)
            plot.image_grid(model.mean_image(model.decode_codes(codes)), output_path("samples.png"),
                            title="codes sampled from the GRU prior, decoded")
            usage = np.bincount(model.codes(x_test).ravel(), minlength=model.n_codes)
            charts.bar_chart(usage / usage.sum(), output_path("code_usage.png"), "code k", "fraction of test codes",
                             f"code usage (perplexity {test['code_perplexity']:.1f} of {model.n_codes})")
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
            mu = test["code"]
            dims = np.argsort(-mu.var(0))[:10]
            rows = shapes.traversal(lambda z: model.mean_image(model.decode(Tensor(z.astype(mu.dtype)))),
                                    mu[0], dims, np.linspace(-3, 3, 9))
            plot.interpolation_grid(rows, output_path("traversals.png"), row_labels=[f"z{j}" for j in dims],
                                    title=f"latent traversals, z_j from -3 to 3 (beta = {args.beta:g})")
