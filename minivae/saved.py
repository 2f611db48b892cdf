"""Using a trained model without retraining: load_model(path) rebuilds it from its checkpoint.

A training checkpoint holds the run's flags (its "config") beside the parameters, so the model
can be built again exactly as the training script built it, and the parameters loaded into it:

    model = load_model("runs/mnist-vae/checkpoint.npz")
    images = model.sample(16, np.random.default_rng(0))

Which builder runs is decided by the config's "model" entry ("mlp_vae", "sentence_vae",
"tdvae", "vqvae2"); older
checkpoints without it are recognised by what they hold (checkpoint.model_kind). A new kind of
model registers one row in BUILDERS: a function from the checkpoint's state dict to the model,
parameters not yet loaded.
"""
import numpy as np

from .checkpoint import CheckpointError, check_fields, load_checkpoint, model_kind
from .models import make_model
from .sentence_vae import SentenceVAE
from .tdvae import from_config as tdvae_from_config
from .text import Vocab
from .vqvae2 import make_model as make_vqvae2


def sentence_model(config, vocab_size, rng=None):
    """The SentenceVAE that a run of scripts/train_text_vae.py with these flags (a dict) trains."""
    norm = "bn" if config["bn_vae"] else "tau" if config["bn_vae_tau"] is not None else None
    return SentenceVAE(vocab_size, config["embedding"], config["hidden"], config["latent"], config["bidirectional"],
                       config["z_to_every_step"], norm, bn_gamma=config["bn_vae"] or 0.5,
                       bn_tau=0.5 if config["bn_vae_tau"] is None else config["bn_vae_tau"],
                       bow_hidden=config["bow_hidden"] if config["bow"] else 0, historyless=config["historyless"],
                       rng=rng, dtype=np.dtype(config["dtype"]))


def _sentence_vae(state):
    """The sentence VAE, with its vocabulary (saved beside the parameters) as model.vocab."""
    vocab = Vocab.from_dict(state["vocab"])
    model = sentence_model(state["config"], len(vocab))
    model.vocab = vocab
    return model


BUILDERS = {  # the config's "model" -> a function of the checkpoint's state building that model
    "mlp_vae": lambda state: make_model(state["config"]),
    "sentence_vae": _sentence_vae,
    "tdvae": lambda state: tdvae_from_config(state["config"]),
    "vqvae2": lambda state: make_vqvae2(state["config"]),  # scripts/train_autoencoder.py --model vqvae2
}


def load_model(path):
    """The trained model saved in the checkpoint at `path`, ready to use (evaluation only).

    The model is rebuilt from the checkpoint's config and its parameters loaded; `model.config`
    is that config (the training run's flags), and a sentence model also gets `model.vocab`.
    Anything that is not a minivae training checkpoint, or does not fit the model its config
    describes, raises CheckpointError with the reason.
    """
    state = load_checkpoint(path)
    check_fields(state, {"params": dict, "config": dict}, path)
    kind = model_kind(state)
    if kind not in BUILDERS:
        raise CheckpointError(f"{path} holds a model of kind {kind!r}; load_model knows {sorted(BUILDERS)}")
    try:
        model = BUILDERS[kind](state)
        model.load_state_dict(state["params"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config or parameters do not describe a {kind} "
                              f"({type(err).__name__}: {err})") from None
    model.config = state["config"]
    return model
