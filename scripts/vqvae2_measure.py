"""What a trained VQ-VAE-2 (train_autoencoder.py --model vqvae2) is measured by, each number beside
its baseline, and its pictures; vqvae2_run.py calls measure() at the end of a run.

- reconstruction (BCE, nats per test image): two levels; the bottom codes all replaced by the
  most frequent one (what the top alone carries); the top replaced so; a flat VQ-VAE with about
  as many bits (flat_shape: codes from the top's K), trained with the same epochs, and its GRU prior
- per level: codes used out of K and perplexity over the whole test set (in vqvae2_run.evaluate)
- prior NLL in bits per image, train and test: top, bottom | top, bottom alone, against the
  uniform (L log2 K) and unigram (each code's training frequency, add-one smoothed) baselines
- class consistency: keep an image's top codes, draw its bottom codes 10 times from p(bottom | top)
  (and from p(bottom) alone, which ignores the top), decode, classify; how often the class is the
  image's label (chance: 10%). Roles swapped: keep the bottom codes, draw the top from p(top)
- 100 ancestral samples: the classifier's class histogram, its entropy and mean confidence, for
  VQ-VAE-2, the flat VQ-VAE with its prior, and uniform random codes (a negative control)
The classifier is digit_classifier.py's MLP, cached in the run folder as classifier.npz.
"""
import os
import time

import numpy as np

import digit_classifier
from minivae import data, vqvae, vqvae2
from minivae.run import plot_module, progress
from minivae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivae.engine import Tensor, no_grad
from minivae.optim import Adam

N_DRAWS = 10  # bottom (or top) codes drawn per kept image
CONSISTENCY_IMAGES = 1000  # test images whose codes are kept (200 with --quick)
CLASSIFIER_EPOCHS = 5  # 2 with --quick


def flat_shape(args):
    """(L, K) of the flat VQ-VAE with about as many bits as the two levels: K = the top level's K,
    L = the two levels' bits / log2 K, rounded (4 x 9 + 16 x 4 = 100 bits: 11 codes of K = 512, 99 bits)."""
    bits = args.latent * np.log2(args.n_codes) + vqvae2.N_BOTTOM * np.log2(args.n_codes_bottom)
    return max(1, int(round(bits / np.log2(max(args.n_codes, 2))))), args.n_codes


def flat_baseline(args, x_train, x_test, out):
    """The flat VQ-VAE with about as many bits and its CodePrior, trained like the two-level model's
    stage 1 and 2 (same epochs, batch, lr, EMA, restarts); read from flat_vqvae.npz if an earlier run saved it."""
    import vqvae2_run  # its stage-1 epoch trains this model too
    (L, K), path = flat_shape(args), out("flat_vqvae.npz")
    rng = np.random.default_rng([args.seed, 8])
    model = vqvae.VQVAE(784, tuple(args.hidden), L, args.code_dim, K, "relu", commitment=args.commitment,
                        ema=True, rng=rng, dtype=x_train.dtype)
    prior = vqvae.CodePrior(K, L, hidden=64, rng=rng, dtype=x_train.dtype)  # as the two-level priors
    recipe = {k: getattr(args, k) for k in ("epochs", "prior_epochs", "batch_size", "lr", "seed", "limit")}
    recipe.update(latents=L, codes=K)
    try:
        state = load_checkpoint(path) if os.path.exists(path) else None
        if state is not None and state["recipe"] == recipe:
            model.load_state_dict(state["params"])
            prior.load_state_dict(state["prior"])
            return model, prior, state["seconds"]
    except (CheckpointError, KeyError, ValueError) as err:
        print(f"retraining the flat VQ-VAE: {path} does not fit ({err})")
    t0, emas = time.perf_counter(), [vqvae.EMACodebook(model.codebook, args.ema_decay)]
    usage = [np.zeros(K, int)]  # how often each code was chosen since the last restart
    optimizer, step = Adam([p for p in model.parameters() if p is not model.codebook.E], lr=args.lr), 0
    vqvae2_run.start_codebooks(model, x_train[:args.batch_size], rng, emas)
    for epoch in range(args.epochs):
        bar = progress(data.batches(len(x_train), args.batch_size, rng), -(-len(x_train) // args.batch_size),
                       f"flat VQ-VAE, epoch {epoch + 1}", not args.no_progress)
        averages, step, _ = vqvae2_run.autoencoder_epoch(model, x_train, optimizer, emas, usage, rng, args, step, bar)
        print(f"flat VQ-VAE epoch {epoch + 1}/{args.epochs}  train objective {averages['train_objective']:.2f}",
              flush=True)
    codes, prior_optimizer = model.codes(x_train), Adam(prior.parameters(), lr=args.lr)
    for _ in range(args.prior_epochs):
        for idx in data.batches(len(codes), args.batch_size, rng):
            nll, _ = prior.loss(codes[idx])
            prior_optimizer.zero_grad()
            nll.backward()
            prior_optimizer.step()
    seconds = time.perf_counter() - t0
    save_checkpoint(path, params=model.state_dict(), prior=prior.state_dict(), recipe=recipe, seconds=seconds)
    return model, prior, seconds


def mean_rec(model, decode, x, batch_size=1000):
    """Mean BCE (nats per image) of the images x against decode(rows), the logits of those rows of x."""
    total = 0.0
    with no_grad():
        for i in range(0, len(x), batch_size):
            rows = np.arange(i, min(i + batch_size, len(x)))
            total += float(np.sum(model.reconstruction_error(Tensor(x[rows]), decode(rows)).data))
    return total / len(x)


def unigram_bits(codes_train, codes_test, K):
    """Test NLL in bits per image of codes drawn independently from their add-one-smoothed training frequencies."""
    p = (np.bincount(codes_train.ravel(), minlength=K) + 1) / (codes_train.size + K)
    return float(-np.log2(p)[codes_test].sum(1).mean())


def decode_images(model, top, bottom, batch_size=1000):
    """Mean images of the code pairs, in batches."""
    with no_grad():
        return np.concatenate([model.mean_image(model.decode_codes(top[i:i + batch_size], bottom[i:i + batch_size]))
                               for i in range(0, len(top), batch_size)])


def consistency(model, clf, top, bottom, labels, rng):
    """How often the class of a decoded image whose bottom or top codes were redrawn is the original label."""
    n, agree = len(labels), {}
    top_n, bottom_n = np.repeat(top, N_DRAWS, axis=0), np.repeat(bottom, N_DRAWS, axis=0)
    with no_grad():
        draws = {"keep_top_bottom_from_p_bottom_given_top": (top_n, model.bottom_prior.sample(top_n, rng)),
                 "keep_top_bottom_from_p_bottom_alone": (top_n, model.bottom_prior_alone.sample(n * N_DRAWS, rng)),
                 "keep_bottom_top_from_p_top": (model.top_prior.sample(n * N_DRAWS, rng), bottom_n),
                 "reconstruction": (top, bottom)}
    for name, (t, b) in draws.items():
        predicted = digit_classifier.probabilities(clf, decode_images(model, t, b)).argmax(1)
        agree[name] = float(np.mean(predicted == np.repeat(labels, len(t) // n)))
    return agree


def measure(model, datasets, codes_train, codes_test, args, out):
    """Every number of the module docstring, as a dict for metrics.json; draws the pictures unless --no-plots."""
    x_train, y_train, x_test, y_test = datasets
    rng = np.random.default_rng([args.seed, 9])
    (top, bottom), Ks = codes_test, (model.n_codes_top, model.n_codes_bottom)
    frequent = [int(np.bincount(c.ravel(), minlength=K).argmax()) for c, K in zip(codes_train, Ks)]
    flat, flat_prior, flat_seconds = flat_baseline(args, x_train[:args.limit or len(x_train)], x_test, out)
    flat_codes_train, flat_codes_test = flat.codes(x_train[:args.limit or len(x_train)]), flat.codes(x_test)
    result = {"bits_per_image": model.n_top * float(np.log2(Ks[0])) + vqvae2.N_BOTTOM * float(np.log2(Ks[1])),
              "flat_bits_per_image": flat.n_latents * float(np.log2(flat.n_codes)), "flat_seconds": flat_seconds}
    top_frequent, bottom_frequent = np.full_like(top, frequent[0]), np.full_like(bottom, frequent[1])
    result["rec"] = {
        "two_level": mean_rec(model, lambda i: model.decode_codes(top[i], bottom[i]), x_test),
        "bottom_all_most_frequent": mean_rec(model, lambda i: model.decode_codes(top[i], bottom_frequent[i]), x_test),
        "top_all_most_frequent": mean_rec(model, lambda i: model.decode_codes(top_frequent[i], bottom[i]), x_test),
        "flat_vqvae": mean_rec(flat, lambda i: flat.decode_codes(flat_codes_test[i]), x_test)}
    result["flat_codes_used"] = int(len(np.unique(flat_codes_test)))
    result["flat_perplexity"] = vqvae.perplexity(flat_codes_test, flat.n_codes)
    with no_grad():
        flat_nll = -np.concatenate([flat_prior.log_prob(flat_codes_test[i:i + 1000]).data
                                    for i in range(0, len(x_test), 1000)]).mean() / np.log(2)
    result["baselines_bits"] = {
        "top_uniform": model.n_top * float(np.log2(Ks[0])), "bottom_uniform": vqvae2.N_BOTTOM * float(np.log2(Ks[1])),
        "top_unigram": unigram_bits(codes_train[0], top, Ks[0]),
        "bottom_unigram": unigram_bits(codes_train[1], bottom, Ks[1]),
        "flat_prior_test": float(flat_nll), "flat_uniform": result["flat_bits_per_image"],
        "flat_unigram": unigram_bits(flat_codes_train, flat_codes_test, flat.n_codes)}
    clf, accuracy = digit_classifier.load_or_train(out("classifier.npz"), x_train, y_train, x_test, y_test, args.seed,
                                                   2 if args.quick else CLASSIFIER_EPOCHS)
    n = min(200 if args.quick else CONSISTENCY_IMAGES, len(x_test))
    result["classifier_test_accuracy"] = accuracy
    result["class_consistency"] = {"images": n, "draws_per_image": N_DRAWS,
                                   **consistency(model, clf, top[:n], bottom[:n], y_test[:n], rng)}
    with no_grad():
        samples = {"vqvae2": model.sample(100, rng),
                   "flat_vqvae": flat.mean_image(flat.decode_codes(flat_prior.sample(100, rng))),
                   "uniform_codes": decode_images(model, rng.integers(0, Ks[0], (100, model.n_top)),
                                                  rng.integers(0, Ks[1], (100, vqvae2.N_BOTTOM)))}
    result["samples_100"] = {name: digit_classifier.histogram(digit_classifier.probabilities(clf, images))
                             for name, images in samples.items()}
    if not args.no_plots:
        pictures(model, x_test, y_test, rng, out, frequent[1], samples)
    return result


def pictures(model, x, y, rng, out, frequent_bottom, samples=None):
    """reconstructions.png, same_top.png, samples.png (and the controls' sample grids); returns their names."""
    plot = plot_module()
    if plot is None:
        return []
    top, bottom = model.codes(x[:10])
    rows = [x[:10], decode_images(model, top, bottom), decode_images(model, top, np.full_like(bottom, frequent_bottom))]
    plot.interpolation_grid(rows, out("reconstructions.png"), row_labels=["original", "two levels", "top only"],
                            title=f"Test images; both levels; top only (every bottom code {frequent_bottom})")
    keep = np.repeat(top[:8], 8, axis=0)
    with no_grad():
        redrawn = decode_images(model, keep, model.bottom_prior.sample(keep, rng)).reshape(8, 8, -1)
    plot.interpolation_grid([np.concatenate([x[[i]], rows[1][[i]], redrawn[i]]) for i in range(8)], out("same_top.png"),
                            row_labels=[f"label {c}" for c in y[:8]],
                            title="Original, reconstruction, 8 x (its top, bottom ~ p(bottom | top))")
    samples = samples or {"vqvae2": model.sample(64, rng)}
    titles = {"vqvae2": "VQ-VAE-2: top ~ p(top), bottom ~ p(bottom | top)",
              "flat_vqvae": "flat VQ-VAE, as many bits, codes ~ its prior",
              "uniform_codes": "VQ-VAE-2 decoder, uniform random codes"}
    names = {"vqvae2": "samples.png", "flat_vqvae": "samples_flat.png", "uniform_codes": "samples_uniform.png"}
    for key, images in samples.items():
        plot.image_grid(images[:64], out(names[key]), title=titles[key])
    return ["reconstructions.png", "same_top.png", *(names[key] for key in samples)]
