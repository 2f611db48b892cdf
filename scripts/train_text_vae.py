"""Train a sentence VAE (Bowman et al. 2016) with minivae, with every posterior-collapse remedy as a flag.

The corpus is the built-in toy language (sentences whose topic, sentiment and tense are known,
see minivae.toy_language.toy_corpus) or a UTF-8 text file with one sentence per line. Defaults: 20,000
toy sentences split 90/5/5, vocabulary capped at 2,000 ids, embedding 64, GRU 128, latent 16,
batch 32, Adam 1e-3, gradient norm clipped at 5, beta = 1, and one remedy against posterior
collapse: the bag-of-words loss (--bow 1, Zhao et al. 2017). --bow 0 gives the plain VAE, whose
KL collapses to 0 on this model; docs/collapse.md measures every remedy. NLL and KL are in nats
per sentence; perplexity is per token, counting <eos> and not <sos>, and computed from -ELBO (so
it is an upper bound; the bag-of-words term is not part of the ELBO). The test block of
metrics.json adds the mutual information I(x; z) with its standard error, greedy reconstruction
(exact-match rate, mean word edit distance to the input and to another input, number of
different decodings) and, on the toy corpus, how well a linear probe reads each factor (topic,
sentiment, tense) and the sentence length (quartile bins) from the posterior means and from
samples of z. A run that ends with KL < 0.5 nat or no active unit says so.

    python scripts/train_text_vae.py --corpus toy --epochs 10 --out runs/text-vae
    python scripts/train_text_vae.py --corpus path/to/train.txt --valid-corpus path/to/valid.txt \\
        --bow 0 --beta-schedule logistic --word-dropout 0.25 --free-bits 0.25 --out runs/ptb
"""
import argparse
import time

import numpy as np

from minivae import flags, text
from minivae.allocator import reuse_freed_memory
from minivae.collapse import MDR, SoftFreeBits, contiguous_dropout, word_dropout
from minivae.fileio import write_json
from minivae.layers import dropout_mask
from minivae.optim import Adam, clip_grad_norm
from minivae.run import Run, plot_module, resume, stop_if_not_finite, warn_if_one_batch
from minivae.saved import sentence_model
from minivae.text_diagnostics import evaluate_sentences, reconstruction_and_probes, write_text_outputs

ARCHITECTURE = ("corpus", "data_seed", "embedding", "hidden", "latent", "bidirectional", "z_to_every_step",
                "bn_vae", "bn_vae_tau", "historyless", "max_vocab", "dtype")
PROBE_TRAIN = 5000  # training sentences on which the factor probes are trained (toy corpus)
COLLAPSED_KL = 0.5  # nats per sentence: a run ending below it, or with no active unit, is told it collapsed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    finite = flags.finite_float  # a float type that refuses nan and inf
    d = p.add_argument_group("data")
    d.add_argument("--corpus", default="toy", help="'toy' or a UTF-8 file, one sentence per line")
    d.add_argument("--valid-corpus", help="validation file (else 5%% of --corpus is held out)")
    d.add_argument("--test-corpus", help="test file (else 5%% of --corpus is held out)")
    d.add_argument("--toy-sentences", type=int, default=20000, help="size of the toy corpus")
    d.add_argument("--toy-length", type=int, nargs=2, default=[5, 25], metavar=("MIN", "MAX"),
                   help="toy corpus: sentence lengths in tokens, inclusive (4 <= MIN <= MAX <= 40); sentences "
                   "outside them are redrawn")
    d.add_argument("--toy-topics", type=int, default=6, help="toy corpus: number of topics (2 to 10), each "
                   "with its own nouns, verbs and adjectives")
    d.add_argument("--data-seed", type=int, default=0, help="seed of the toy corpus and of the held-out "
                   "split, apart from --seed so that runs with different seeds see the same data")
    d.add_argument("--max-vocab", type=int, default=2000, help="vocabulary size incl. 4 specials (0: all)")
    d.add_argument("--max-len", type=int, default=0, help="cut sentences of a file to this many tokens (0: no cut)")
    d.add_argument("--lowercase", action="store_true", help="lower-case a corpus file before building the vocabulary")
    m = p.add_argument_group("model")
    m.add_argument("--embedding", type=int, default=64, help="word embedding size")
    m.add_argument("--hidden", type=int, default=128, help="GRU state size (encoder and decoder)")
    m.add_argument("--latent", type=int, default=16, help="latent dimensions d")
    m.add_argument("--bidirectional", action="store_true", help="bidirectional encoder GRU")
    m.add_argument("--z-to-every-step", action="store_true", help="feed z to the decoder at every step")
    m.add_argument("--embedding-dropout", type=finite, default=0.0, help="dropout on decoder input embeddings")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=10, help="passes over the training sentences")
    t.add_argument("--batch-size", type=int, default=32, help="sentences per Adam step")
    t.add_argument("--lr", type=finite, default=1e-3, help="Adam learning rate")
    t.add_argument("--clip", type=finite, default=5.0, help="clip the gradient norm to this (0: off)")
    t.add_argument("--bucket", type=int, default=50, help="sort by length within pools of this many "
                   "batches to cut padding (0: plain shuffling)")
    r = p.add_argument_group("posterior-collapse remedies", "The default is the bag-of-words loss (--bow 1), chosen "
                             "from docs/collapse.md's measurements: in every seed it keeps z in use with room to spare "
                             "(KL 3.9 to 4.2 nats, 10 to 13 of 16 units active in the quick study's 3 seeds; 6.6 nats "
                             "in the full one), and its z carries the most: linear probes read topic, sentiment and "
                             "tense from z, and its reconstructions come closest to the input. It costs 1.2 to 1.3 nats "
                             "of -ELBO per sentence. Other remedies add to it; --bow 0 turns it off (--bow 0 alone: "
                             "the plain VAE, which collapses).")
    flags.add_kl_flags(r)
    r.add_argument("--ha-bits", type=finite, default=0.0, help="HA bits lambda: floor on the KL averaged "
                   "over batch and dimensions, nats per dimension")
    r.add_argument("--soft-free-bits", type=finite, default=0.0, metavar="TARGET", help="soft free bits: "
                   "adapt the KL weight (up to --beta) towards this KL, nats per sentence")
    r.add_argument("--sfb-rate", type=finite, default=0.01, help="soft free bits: weight *= or /= (1 + rate)")
    r.add_argument("--mdr", type=finite, default=0.0, metavar="RATE", help="minimum desired rate: "
                   "Lagrangian constraint KL >= RATE, nats per sentence")
    r.add_argument("--mdr-lr", type=finite, default=0.01, help="MDR: step size of the multiplier's ascent")
    r.add_argument("--bn-vae", type=finite, default=0.0, metavar="GAMMA", help="BN-VAE: batch norm on mu "
                   "with this fixed scale (0.5 is usual)")
    r.add_argument("--bn-vae-tau", type=finite, default=None, metavar="TAU", help="Su's tau variant of "
                   "BN-VAE (0.5 is usual)")
    r.add_argument("--word-dropout", type=finite, default=0.0, metavar="P", help="replace decoder input "
                   "words by <unk> with probability P")
    r.add_argument("--contiguous-dropout", type=finite, default=0.0, metavar="P", help="drop spans of "
                   "decoder input words starting with probability P")
    r.add_argument("--span-lambda", type=finite, default=2.0, metavar="L", help="contiguous dropout: "
                   "Poisson mean span length")
    r.add_argument("--historyless", action="store_true", help="inputless decoder: it reads <unk> in place of "
                   "every word (word dropout 1), in training, evaluation and generation alike")
    r.add_argument("--bow", type=finite, default=1.0, metavar="WEIGHT", help="weight of the bag-of-words loss "
                   "(Zhao et al. 2017): z must also predict the sentence's words in any order; 0: off")
    r.add_argument("--bow-hidden", type=int, default=128, help="hidden size of the bag-of-words MLP")
    o = p.add_argument_group("output")
    o.add_argument("--eval-batch-size", type=int, default=200, help="sentences per batch when evaluating (memory, not results)")
    o.add_argument("--n-samples", type=int, default=10, help="sentences in samples.txt etc.")
    o.add_argument("--max-gen-len", type=int, default=40, help="longest generated sentence (tokens)")
    flags.add_run_flags(o, out="runs/text-vae")
    p.set_defaults(model="sentence_vae")  # not a flag: the checkpoint's config names the model for load_model
    args = p.parse_args(argv)
    flags.check_flags(p, args, positive=("lr", "sfb_rate", "mdr_lr"), in_0_1=("word_dropout", "contiguous_dropout"),
                      at_least_1=("epochs", "batch_size", "latent", "embedding", "hidden", "toy_sentences",
                                  "eval_batch_size", "max_gen_len", "bow_hidden", "n_samples"),
                      at_least_0=("beta", "free_bits", "ha_bits", "clip", "soft_free_bits", "mdr", "bn_vae",
                                  "bow", "span_lambda", "max_len", "bucket", "data_seed"))
    if args.soft_free_bits and args.beta <= 0:
        p.error("--soft-free-bits needs --beta > 0 (the largest KL weight it may reach)")
    low, high = args.toy_length
    if not 4 <= low <= high <= 40:
        p.error(f"--toy-length must be MIN MAX with 4 <= MIN <= MAX <= 40, the lengths the toy grammar makes "
                f"(got {low} {high})")
    if not 2 <= args.toy_topics <= 10:
        p.error(f"--toy-topics must be in 2..10 (got {args.toy_topics})")
    toy_flags = {"toy_length": args.toy_length, "toy_topics": args.toy_topics}
    if args.corpus != "toy" and any(value != p.get_default(name) for name, value in toy_flags.items()):
        p.error("--toy-length and --toy-topics shape the toy corpus; with --corpus PATH leave them out")
    if args.max_vocab and args.max_vocab <= len(text.SPECIALS):
        p.error(f"--max-vocab must be 0 (no cap) or > {len(text.SPECIALS)} (it counts the special tokens)")
    if not 0 <= args.embedding_dropout < 1:
        p.error(f"--embedding-dropout must be in [0, 1) (got {args.embedding_dropout})")
    if args.bn_vae_tau is not None and not 0 <= args.bn_vae_tau < 1:
        p.error(f"--bn-vae-tau must be in [0, 1) (got {args.bn_vae_tau})")
    exclusive = [("--free-bits", args.free_bits > 0, "--ha-bits", args.ha_bits > 0),
                 ("--bn-vae", args.bn_vae > 0, "--bn-vae-tau", args.bn_vae_tau is not None),
                 ("--historyless", args.historyless, "--word-dropout", args.word_dropout > 0),
                 ("--soft-free-bits", args.soft_free_bits > 0, "--beta-schedule", args.beta_schedule != "constant"),
                 ("--soft-free-bits", args.soft_free_bits > 0, "--mdr", args.mdr > 0)]
    for a, a_on, b, b_on in exclusive:
        if a_on and b_on:
            p.error(f"{a} and {b} cannot be combined (choose one)")
    needs = [("sfb_rate", args.soft_free_bits, "without --soft-free-bits"), ("mdr_lr", args.mdr, "without --mdr"),
             ("span_lambda", args.contiguous_dropout, "without --contiguous-dropout"), ("bow_hidden", args.bow, "without --bow"),
             ("free_bits_mode", args.free_bits, "without --free-bits"), ("lowercase", args.corpus != "toy", "with --corpus toy"),
             ("max_len", args.corpus != "toy", "with --corpus toy")]
    flags.warn_ignored(p, args, {name: when for name, used, when in needs if not used})
    return args


def load_data(args):
    """TextData from the toy generator or from files; bad files end the script with the reason."""
    max_size = args.max_vocab or None
    try:
        if args.corpus == "toy":
            if args.valid_corpus or args.test_corpus:
                raise ValueError("--valid-corpus/--test-corpus need --corpus PATH, not the toy corpus")
            return text.load_toy_data(args.toy_sentences, seed=args.data_seed, max_size=max_size,
                                      n_topics=args.toy_topics, length_range=tuple(args.toy_length))
        return text.load_text_data(args.corpus, args.valid_corpus, args.test_corpus, seed=args.data_seed,
                                   max_size=max_size, lowercase=args.lowercase, max_len=args.max_len or None)
    except (OSError, ValueError) as err:
        raise SystemExit(f"data: {err}") from None


def main(argv=None):
    args = parse_args(argv)
    reuse_freed_memory()  # large temporaries without page faults (see its docstring)
    dtype = np.dtype(args.dtype)
    run = Run(args, argv, __file__)  # the output folder, the last checkpoint, the clean stop
    with run.stop_cleanly():  # Ctrl-C, SIGTERM, a full disk: say where, keep the last checkpoint, print how to resume
        data = load_data(args)
        vocab = data.vocab
        print(f"corpus {args.corpus}: {text.describe(data)}")  # with a WARNING if valid/test words are unknown
        uses_bn = args.bn_vae > 0 or args.bn_vae_tau is not None
        # Batch norm needs >= 2 sentences per batch, so a last batch of 1 is dropped when it is on.
        n_train_batches = len(data.train) // args.batch_size if uses_bn else -(-len(data.train) // args.batch_size)
        warn_if_one_batch(args.batch_size, len(data.train), "sentences")
        if n_train_batches < 1:
            raise SystemExit(f"--batch-size {args.batch_size} is larger than the {len(data.train)} training sentences")
        beta_fn = flags.beta_schedule(args, args.epochs * n_train_batches)

        rng = np.random.default_rng(args.seed)
        model = sentence_model(vars(args), len(vocab), rng)  # the one construction load_model uses too
        optimizer = Adam(model.parameters(), lr=args.lr)
        sfb = None
        if args.soft_free_bits:
            sfb = SoftFreeBits(args.soft_free_bits, args.sfb_rate, weight=0.1 * args.beta, max_weight=args.beta)
        mdr = MDR(args.mdr, args.mdr_lr) if args.mdr else None
        config = flags.run_config(args)
        history, step, start_epoch, train_tokens, train_seconds = [], 0, 0, 0.0, 0.0
        if args.resume:
            state = resume(args.resume, args, ARCHITECTURE, model, optimizer, rng, same={"vocab": vocab.to_dict()},
                           needs=("train_tokens", "train_seconds"), soft_free_bits=sfb, mdr=mdr)
            history, step, start_epoch = state["history"], state["step"], state["epoch"]
            train_tokens, train_seconds = state["train_tokens"], state["train_seconds"]
        print(f"SentenceVAE with {model.num_parameters():,} parameters")

        for epoch in range(start_epoch, args.epochs):
            t0, totals, n_sent = time.perf_counter(), {"rec": 0.0, "kl": 0.0}, 0
            batches = text.text_batches(data.train, args.batch_size, rng, bucket=args.bucket, drop_last=uses_bn)
            bar = run.progress(batches, n_train_batches, epoch, step)
            for batch in bar:
                B, T1 = batch["dec_in"].shape                           # T1 = longest sentence + 1
                eps = rng.standard_normal((B, args.latent)).astype(dtype)   # reparameterisation noise
                dec_in = word_dropout(batch["dec_in"], args.word_dropout, rng)   # decoder-side corruption only
                dec_in = contiguous_dropout(dec_in, args.contiguous_dropout, args.span_lambda, rng)
                emb_mask = (dropout_mask((B, T1, args.embedding), args.embedding_dropout, rng, dtype)
                            if args.embedding_dropout else None)
                beta = sfb.weight if sfb else beta_fn(step)
                objective, stats = model.loss(
                    batch, eps, beta, args.free_bits, args.free_bits_mode, args.ha_bits,
                    mdr_rate=args.mdr, mdr_multiplier=mdr.multiplier if mdr else 0.0, bow_weight=args.bow,
                    dec_in=dec_in, emb_mask=emb_mask, training=True)
                stop_if_not_finite(stats, step, run.last_checkpoint)  # before the update
                optimizer.zero_grad()
                objective.backward()
                if args.clip:
                    clip_grad_norm(model.parameters(), args.clip)
                optimizer.step()
                if sfb:
                    sfb.step(stats["kl"])
                if mdr:
                    mdr.step(stats["kl"])
                step += 1
                train_tokens += stats["n_tokens"]
                totals["rec"] += stats["rec"] * B
                totals["kl"] += stats["kl"] * B
                n_sent += B
                bar.set_postfix(nll=f"{totals['rec'] / n_sent:.2f}", kl=f"{totals['kl'] / n_sent:.2f}",
                                beta=f"{beta:.3f}")
            seconds = time.perf_counter() - t0
            train_seconds += seconds

            valid = evaluate_sentences(model, data.valid, np.random.default_rng([args.seed, epoch, 1]),
                                       args.eval_batch_size)
            record = {"epoch": epoch + 1, "train_nll": totals["rec"] / n_sent, "train_kl": totals["kl"] / n_sent,
                      **{f"valid_{k}": valid[k] for k in ("nll", "kl", "ppl", "neg_elbo")},
                      "active_units": valid["active_units"], "mi": valid["mi"], "mi_se": valid["mi_se"],
                      "beta": sfb.weight if sfb else beta_fn(step - 1), "seconds": seconds}
            if mdr:
                record["mdr_multiplier"] = mdr.multiplier
            history.append(record)
            print(f"epoch {epoch + 1:3d}/{args.epochs}  train NLL {record['train_nll']:7.2f} "
                  f"KL {record['train_kl']:6.2f}  |  valid NLL {valid['nll']:7.2f} KL {valid['kl']:6.2f} "
                  f"PPL {valid['ppl']:8.2f} AU {valid['active_units']:2d} MI {valid['mi']:5.2f}±{valid['mi_se']:.2f}  "
                  f"beta {record['beta']:.3f}  {seconds:5.1f} s", flush=True)
            run.save(model, optimizer, rng, config=config, step=step, epoch=epoch + 1, history=history,
                     vocab=vocab.to_dict(), train_tokens=train_tokens, train_seconds=train_seconds,
                     soft_free_bits=sfb.state_dict() if sfb else None, mdr=mdr.state_dict() if mdr else None)

        test = evaluate_sentences(model, data.test, np.random.default_rng([args.seed, 2]), args.eval_batch_size)
        test.update(reconstruction_and_probes(model, data, np.random.default_rng([args.seed, 5]),
                                              args.eval_batch_size, PROBE_TRAIN))
        tokens_per_sec = train_tokens / train_seconds if train_seconds > 0 else None
        print(f"test  NLL {test['nll']:.2f}  KL {test['kl']:.2f}  PPL {test['ppl']:.2f}  AU {test['active_units']} "
              f"of {args.latent}  MI {test['mi']:.2f}±{test['mi_se']:.2f}   training speed {tokens_per_sec or 0:,.0f} "
              "tokens/s")
        probes = ""
        for name, r in (test["factor_accuracy"] or {}).items():
            probes += (f"  |  {name} probe {100 * r['accuracy']:.1f}% on mu, {100 * r['accuracy_z']:.1f}% on z "
                       f"(chance {100 * r['chance']:.1f}%)")
        print(f"test  greedy reconstruction: {100 * test['recon_accuracy']:.1f}% exact, {test['recon_distinct']} "
              f"different of {len(data.test)}, Levenshtein {test['levenshtein']:.2f} words to its input, "
              f"{test['levenshtein_other']:.2f} to another{probes}")
        if test["kl"] < COLLAPSED_KL or test["active_units"] == 0:
            print(f"WARNING: posterior collapse: held-out KL {test['kl']:.2f} nats, {test['active_units']} of {args.latent} "
                  "units active; z carries almost nothing and decodings ignore the input (docs/collapse.md compares "
                  "the remedies)")
        write_json(run.path("metrics.json"), {
            "config": config, "data": data.info, "epochs": history,
            "test": {k: test[k] for k in ("nll", "kl", "ppl", "neg_elbo", "active_units", "mi", "mi_se",
                                          "recon_accuracy", "recon_distinct", "levenshtein", "levenshtein_other",
                                          "factor_accuracy")},
            "kl_per_dim": [float(v) for v in test["kl_per_dim"]], "tokens_per_sec": tokens_per_sec})
        write_text_outputs(model, data.vocab, data.test, args.out, np.random.default_rng([args.seed, 4]),
                           n=args.n_samples, max_len=args.max_gen_len)
        if not args.no_plots:
            make_figures(args, run.path, data, history, test, beta_fn, n_train_batches)
        print(f"wrote {args.out}/metrics.json, samples.txt, reconstructions.txt, interpolations.txt, checkpoint.npz"
              + ("" if args.no_plots else " and figures"))
    return history


def make_figures(args, output_path, data, history, test, beta_fn, steps_per_epoch):
    """The PNGs: curves, KL per dimension, beta schedule, and (toy corpus) the latent space by topic."""
    plot = plot_module()
    if plot is None:
        return
    plot.text_curves(history, output_path("curves.png"))
    plot.kl_per_dim(test["kl_per_dim"], output_path("kl_per_dim.png"), threshold=args.free_bits or args.ha_bits or None,
                    threshold_label="free bits" if args.free_bits else "HA bits")
    plot.beta_schedule(beta_fn, args.epochs * steps_per_epoch, output_path("beta_schedule.png"))
    if data.factors is not None and args.latent >= 2:
        plot.latent_scatter(test["mu"], data.factors["test"]["topic"], output_path("latent.png"),
                            title="posterior means of test sentences, by topic")


if __name__ == "__main__":
    main()
