"""Use a trained model without retraining: pictures or sentences from a checkpoint.

For an image model (scripts/train_mnist_vae.py): samples from the prior (samples.png), N test
images above their reconstructions (reconstructions.png), the interpolation between two chosen
test images (interpolation.png), and a latent traversal (traversal.png: the most used latent
dimensions, one per row, swept from -3 to 3 around the first chosen image's posterior mean); a
conditional model draws its samples one row per label, and adds class_samples.png (one z per
column, the same z in every row). For a sentence model
(scripts/train_text_vae.py): N sentences from z ~ N(0, I) by greedy decoding, sampling with a
temperature and beam search (samples.txt); the reconstructions of sentences given with
--sentence or on stdin (reconstructions.txt), and the interpolation between two of them
(interpolation.txt). Each list says how many different sentences it holds, and the
reconstructions how far each lies from its own input and from the next one: a model whose z
is used decodes different inputs differently, a collapsed one gives every z the same sentence.
Text outputs are printed too. For a TD-VAE (scripts/train_tdvae.py): its
rollouts on fresh test sequences (rollouts.png, or rollouts_context11.png and rollouts_context1.png). For a VQ-VAE-2
(train_autoencoder.py --model vqvae2): ancestral samples (samples.png), test images with their
two-level and top-only reconstructions (reconstructions.png) and 8 bottoms drawn for each kept top
(same_top.png).

Everything is written to --out (default: samples/ beside the checkpoint). A folder holding a
training run's results (checkpoint.npz, metrics.json) is refused, so a run is never overwritten.

    python scripts/sample.py runs/mnist-vae/checkpoint.npz --out runs/mnist-vae-samples --pair 3 7
    echo "the old man reads a book" | python scripts/sample.py runs/text-vae/checkpoint.npz --stdin
"""
import argparse
import contextlib
import io
import os
import sys
import warnings

import numpy as np

import mnist_figures  # the sibling script: class_figures draws a conditional VAE's samples
import train_mnist_vae  # the sibling script: its load_data gives the test images the run was tested on
import train_tdvae  # the sibling script: its pictures() draws a TD-VAE's rollouts
from minivae import decoding, text_diagnostics
from minivae.checkpoint import CheckpointError
from minivae.engine import no_grad
from minivae.fileio import atomic_writer
from minivae.flags import RESULTS, finite_float
from minivae.run import plot_module
from minivae.saved import load_model
from minivae.sentence_vae import SentenceVAE
from minivae.tdvae import TDVAE
from minivae.vqvae2 import VQVAE2

TEXT_ONLY = ("sentence", "stdin", "interpolate")  # flags that only a sentence model reads


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint.npz written by train_mnist_vae.py, train_text_vae.py, "
                   "train_tdvae.py or train_autoencoder.py --model vqvae2")
    p.add_argument("--out", help="output folder (default: samples/ beside the checkpoint)")
    p.add_argument("--n", type=int, default=10, help="test images to reconstruct, or sentences per decoding method")
    p.add_argument("--seed", type=int, default=0, help="seed of z ~ N(0, I) and of sampled words")
    i = p.add_argument_group("image models")
    i.add_argument("--pair", type=int, nargs=2, default=[0, 1], metavar=("I", "J"),
                   help="interpolate between test images number I and J (the traversal starts from I)")
    i.add_argument("--data-dir", help="folder of the IDX files (default: the training run's --data-dir)")
    i.add_argument("--no-download", action="store_true", help="never use the network for the test images")
    s = p.add_argument_group("sentence models")
    s.add_argument("--sentence", action="append", default=[], help="a sentence to reconstruct (repeatable)")
    s.add_argument("--stdin", action="store_true", help="also reconstruct the sentences on stdin, one per line")
    s.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="the two sentences to interpolate "
                   "between (default: the first two to reconstruct)")
    s.add_argument("--temperature", type=finite_float, default=1.0, help="softmax temperature of sampling")
    s.add_argument("--beam-width", type=int, default=5, help="hypotheses kept by beam search")
    s.add_argument("--max-len", type=int, default=40, help="longest generated sentence (tokens)")
    args = p.parse_args(argv)
    rules = [("n", args.n >= 1, ">= 1"),
             ("seed", args.seed >= 0, ">= 0"),
             ("pair", min(args.pair) >= 0, ">= 0"),
             ("temperature", args.temperature > 0, "> 0"),
             ("beam_width", args.beam_width >= 1, ">= 1"),
             ("max_len", args.max_len >= 1, ">= 1")]
    for flag, ok, rule in rules:
        if not ok:
            p.error(f"--{flag.replace('_', '-')} must be {rule} (got {getattr(args, flag)})")
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "samples")
    held = [name for name in RESULTS if os.path.isfile(os.path.join(args.out, name))]
    if held:
        p.error(f"--out {args.out} holds a training run's results ({', '.join(held)}): choose another folder")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out} is a file, not a folder")
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as err:
        p.error(str(err))
    is_text = isinstance(model, SentenceVAE)
    used = [f"--{name}" for name in TEXT_ONLY if getattr(args, name)]
    if used and not is_text:
        p.error(f"{', '.join(used)}: only for sentence models; {args.checkpoint} holds an image model")
    used = [f"--{name.replace('_', '-')}" for name in ("pair", "data_dir", "no_download")
            if getattr(args, name) != p.get_default(name)]
    if used and is_text:
        p.error(f"{', '.join(used)}: only for image models; {args.checkpoint} holds a sentence model")
    return args, model


def main(argv=None):
    args, model = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    with no_grad():
        if isinstance(model, TDVAE):  # rollouts on fresh test sequences, as after training
            written = train_tdvae.pictures(model, {**model.config, "data_dir": args.data_dir or model.config["data_dir"]}, args.out)
        elif isinstance(model, VQVAE2):
            written = vqvae2_images(args, model, rng)
        else:
            written = (sentences if isinstance(model, SentenceVAE) else images)(args, model, rng)
    print(f"wrote {', '.join(written)} to {args.out}")
    return written


def images(args, model, rng):
    """The PNGs of an image model; Gaussian means are shown clipped to [0, 1] (the titles say so)."""
    plot = plot_module()
    if plot is None:
        raise SystemExit('sample.py draws images with matplotlib: pip install "minivae[plot]"')
    config = model.config
    trained_with = argparse.Namespace(**{**config, "data_dir": args.data_dir or config["data_dir"],
                                         "no_download": args.no_download or config["no_download"]})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # its lines speak of training
        warnings.simplefilter("ignore", UserWarning)
        _, _, x_test, y_test, info = train_mnist_vae.load_data(trained_with, np.dtype(config["dtype"]))
    source = "the bundled MNIST test set (held-out part)" if info["fallback"] else info["source_dir"]
    print(f"test images: {len(x_test)} from {source}")
    if max(args.pair) >= len(x_test):
        raise SystemExit(f"--pair {args.pair[0]} {args.pair[1]}: there are {len(x_test)} test images (0..{len(x_test) - 1})")
    cond = getattr(model, "n_classes", 0) > 0
    clip = getattr(model, "likelihood", "bernoulli") == "gaussian"

    def output_path(name):
        return os.path.join(args.out, name)

    def y(labels):
        """The labels as the model takes them: only a conditional VAE reads any."""
        return np.asarray(labels) if cond else None

    def mean_image(z, labels):
        return model.mean_image(model.decode(z, y(labels)))

    if cond:  # one row per label: samples.png (a new z per tile) and class_samples.png (one z per column)
        mnist_figures.class_figures(plot, model, rng, output_path, clip)
    else:
        plot.image_grid(model.sample(64, rng), output_path("samples.png"), clip=clip,
                        title="64 samples from p(x|z), z ~ N(0, I)")
    n = min(args.n, len(x_test))
    plot.reconstructions(x_test[:n], model.reconstruct(x_test[:n], y(y_test[:n])),
                         output_path("reconstructions.png"), n=n, clip=clip,
                         title=f"The first {n} test images and their reconstructions")
    a, b = args.pair
    mu = model.encode(x_test[[a, b]], y(y_test[[a, b]]))[0].data  # (2, d)
    t = np.linspace(0, 1, 10, dtype=mu.dtype)[:, None]
    line = mean_image((1 - t) * mu[0] + t * mu[1], np.full(10, y_test[a]))
    plot.interpolation_grid([np.concatenate([x_test[[a]], line, x_test[[b]]])], output_path("interpolation.png"),
                            clip=clip, title=f"Test images {a} and {b} (ends), decoded between their means"
                            + (f", label {y_test[a]}" if cond else ""))
    mus = model.encode(x_test[:1000], y(y_test[:1000]))[0].data
    dims = np.argsort(-mus.var(axis=0))[:8]  # the most used dimensions first: Var_x E[z_j|x]
    sweep = np.linspace(-3, 3, 11, dtype=mu.dtype)
    rows = []
    for j in dims:
        z = np.repeat(mu[:1], len(sweep), axis=0)
        z[:, j] = sweep
        rows.append(mean_image(z, np.full(len(sweep), y_test[a])))
    plot.interpolation_grid(rows, output_path("traversal.png"), row_labels=[f"z{j}" for j in dims], clip=clip,
                            title=f"Latent traversal around test image {a}: z_j from -3 to 3")
    written = ["samples.png", "reconstructions.png", "interpolation.png", "traversal.png"]
    if cond:
        written.append("class_samples.png")
    return written


def vqvae2_images(args, model, rng):
    """The PNGs of a VQ-VAE-2, drawn by vqvae2_measure.pictures from the run's test images."""
    import vqvae2_measure
    import vqvae2_run
    run = argparse.Namespace(data_dir=args.data_dir or model.config["data_dir"],
                             no_download=args.no_download or model.config["no_download"])
    with contextlib.redirect_stdout(io.StringIO()):  # its lines speak of training
        _, _, x_test, y_test, _ = vqvae2_run.load_data(run, np.dtype(model.config["dtype"]))
    frequent = int(np.bincount(model.codes(x_test)[1].ravel()).argmax())  # the "top only" picture's bottom code
    written = vqvae2_measure.pictures(model, x_test, y_test, rng, lambda name: os.path.join(args.out, name), frequent)
    if not written:
        raise SystemExit('sample.py draws images with matplotlib: pip install "minivae[plot]"')
    return written


def sentences(args, model, rng):
    """samples.txt, reconstructions.txt and interpolation.txt of a sentence model, also printed."""
    vocab, lowercase = model.vocab, model.config.get("lowercase", False)

    def show(ids):
        return " ".join(vocab.decode(ids)) or "(empty)"

    def encode(sentence):
        return vocab.encode((sentence.lower() if lowercase else sentence).split())

    given = list(args.sentence)
    if args.stdin:
        given += sys.stdin.read().splitlines()
    given = [s.strip() for s in given if s.strip()]
    z = rng.standard_normal((args.n, model.latent)).astype(model.to_logits.W.dtype)
    methods = [("greedy", {}),
               (f"sampling, temperature {args.temperature:g}",
                {"method": "sample", "rng": rng, "temperature": args.temperature}),
               (f"beam search, width {args.beam_width}", {"method": "beam", "beam_width": args.beam_width})]
    lines = []
    for method, kwargs in methods:
        decoded = decoding.generate(model, z, max_len=args.max_len, **kwargs)
        lines += [f"# z ~ N(0, I), {method} decoding", *map(show, decoded), variety(decoded, "codes"), ""]
    outputs = {"samples.txt": lines}
    if given:
        seqs = [encode(s) for s in given]
        greedy = decoding.reconstruct(model, seqs, max_len=args.max_len)
        beam = decoding.reconstruct(model, seqs, method="beam", beam_width=args.beam_width, max_len=args.max_len)
        lines = ["# sentence / as the model reads it / greedy decoding of its posterior mean / beam search", ""]
        for s, ids, g, b in zip(given, seqs, greedy, beam):
            lines += [f"input:  {s}", f"read:   {show(ids)}", f"greedy: {show(g)}", f"beam:   {show(b)}", ""]
        lines.append(variety(greedy, "inputs"))
        if len(seqs) > 1:  # a decoding that depends on its input is closer to it than to another input
            own = text_diagnostics.reconstruction_scores(seqs, greedy)[1]
            other = text_diagnostics.reconstruction_scores(seqs[1:] + seqs[:1], greedy)[1]
            lines.append(f"# greedy decodings: {own:.1f} word edits from their own input on average, "
                         f"{other:.1f} from the next input")
        outputs["reconstructions.txt"] = lines
    ends = args.interpolate or given[:2]
    if len(ends) == 2:
        path = decoding.interpolate(model, encode(ends[0]), encode(ends[1]), n_steps=6, max_len=args.max_len)
        lines = ["# greedy decodings along the line between the two posterior means", "", f"from: {ends[0]}"]
        lines += [f"  {k}: {show(ids)}" for k, ids in enumerate(path)]
        lines.append(f"to:   {ends[1]}")
        outputs["interpolation.txt"] = lines
    for name, lines in outputs.items():
        with atomic_writer(os.path.join(args.out, name), "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"== {name}\n" + "\n".join(lines))
    return list(outputs)


def variety(decoded, what):
    """'# 10 codes gave 7 different sentences', naming posterior collapse when all gave one sentence."""
    n = len({tuple(text_diagnostics.strip_eos(ids)) for ids in decoded})
    line = f"# {len(decoded)} {what} gave {n} different sentence{'s' * (n != 1)}"
    if n == 1 and len(decoded) > 1:
        line += ": the decoder ignores z (posterior collapse, see docs/collapse.md)"
    return line


if __name__ == "__main__":
    main()
