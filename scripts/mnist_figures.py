"""The PNGs of an image VAE trained by scripts/train_mnist_vae.py, which draws them at the end of a
run; scripts/sample.py draws a conditional VAE's samples from a checkpoint with class_figures.

A conditional VAE's samples are drawn one row per label, each row named by its label:

    python scripts/train_mnist_vae.py --conditional --out runs/cvae      # samples.png, class_samples.png
    python scripts/sample.py runs/cvae/checkpoint.npz --out runs/cvae/again
"""
import numpy as np

from minivae.engine import no_grad
from minivae.run import plot_module


def make_figures(args, output_path, model, x_test, y_test, mu, history, beta_curve, kl_per_dim):
    """The PNGs: samples, reconstructions, curves, beta schedule, latent space, and interpolations
    (unconditional) or one row of samples per class (conditional).

    A Gaussian decoder's means are unbounded: its pictures show them clipped to [0, 1], and say so.
    """
    plot = plot_module()
    if plot is None:
        return
    rng = np.random.default_rng([args.seed, 4])
    clip = args.likelihood == "gaussian"
    with no_grad():
        if args.conditional:
            class_figures(plot, model, rng, output_path, clip)
        else:
            plot.image_grid(model.sample(64, rng), output_path("samples.png"), clip=clip,
                            title="samples from p(x|z), z ~ N(0, I)")
        test_labels = y_test[:10] if args.conditional else None  # only the conditional VAE reads labels
        plot.reconstructions(x_test[:10], model.reconstruct(x_test[:10], test_labels),
                             output_path("reconstructions.png"), n=10, clip=clip)
        plot.latent_scatter(mu[:5000], y_test[:5000], output_path("latent.png"), title="posterior means of test images")
        if not args.conditional:  # interpolate between the posterior means of the first test images of digits 0->1, 2->3, ...
            first = {int(label): i for i, label in reversed(list(enumerate(y_test)))}
            pairs = [(first[a], first[a + 1]) for a in range(0, 9, 2) if a in first and a + 1 in first]
            steps = np.linspace(0, 1, 10, dtype=mu.dtype)[:, None]
            rows = [model.mean_image(model.decode((1 - steps) * mu[a] + steps * mu[b])) for a, b in pairs]
            plot.interpolation_grid(rows, output_path("interpolation.png"), title="interpolating between posterior means",
                                    clip=clip)
        if args.latent == 2 and not args.conditional:
            plot.latent_grid(lambda z: model.mean_image(model.decode(z.astype(mu.dtype))), output_path("latent_grid.png"),
                             clip=clip)
    plot.training_curves(history, output_path("curves.png"))
    plot.beta_schedule(*beta_curve, output_path("beta_schedule.png"))
    plot.kl_per_dim(kl_per_dim, output_path("kl_per_dim.png"), threshold=args.free_bits or None,
                    threshold_label="free bits")


def class_figures(plot, model, rng, output_path, clip=False, n=10):
    """A conditional VAE's samples, one row per label y: samples.png with a new z in every tile,
    class_samples.png with one z per column (the same z in every row, so only the label changes).
    """
    dtype = model.encoder.layers[0].W.dtype
    row_labels = [f"y = {c}" for c in range(model.n_classes)]
    rows = [model.sample(n, rng, np.full(n, c)) for c in range(model.n_classes)]
    plot.interpolation_grid(rows, output_path("samples.png"), row_labels=row_labels, clip=clip,
                            title="samples from p(x|z, y), z ~ N(0, I): one row per label y")
    z = rng.standard_normal((n, model.latent)).astype(dtype)
    rows = [model.mean_image(model.decode(z, np.full(n, c))) for c in range(model.n_classes)]
    plot.interpolation_grid(rows, output_path("class_samples.png"), row_labels=row_labels, clip=clip,
                            title="p(x|z, y): one row per label y, one z ~ N(0, I) per column")
