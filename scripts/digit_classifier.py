"""A small digit classifier trained with minivae, for scoring generated digits: which class a
sample looks like, and how sure the classifier is.

An MLP 784-256-10 (ReLU) trained by softmax cross-entropy with Adam on the MNIST training images:
about 98% test accuracy after 5 epochs. Scripts that judge samples by a classifier share it;
load_or_train caches its weights in a run folder, so a resumed or repeated run reuses them.

    clf, accuracy = load_or_train("runs/vqvae2/classifier.npz", x_train, y_train, x_test, y_test)
    p = probabilities(clf, images)        # (N, 10), rows sum to 1
    label_control(clf, cvae, rng)         # how often a conditional VAE's samples show their label
"""
import os

import numpy as np

from minivae import data, ops
from minivae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivae.engine import Tensor, no_grad
from minivae.fused import softmax_cross_entropy
from minivae.layers import MLP
from minivae.optim import Adam

SIZES = [784, 256, 10]


def train_classifier(x, y, rng, epochs=5, batch_size=128, lr=1e-3):
    """The MLP trained on images x (N, 784) with labels y (N,) for `epochs` passes."""
    clf = MLP(SIZES, "relu", rng, x.dtype)
    optimizer = Adam(clf.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in data.batches(len(x), batch_size, rng):
            loss = ops.mean(softmax_cross_entropy(clf(Tensor(x[idx])), target=y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return clf


def probabilities(clf, x, batch_size=1000):
    """Class probabilities (N, 10) of the images x (N, 784)."""
    with no_grad():
        return np.concatenate([ops.softmax(clf(Tensor(x[i:i + batch_size]))).data
                               for i in range(0, len(x), batch_size)])


def load_or_train(path, x_train, y_train, x_test, y_test, seed=0, epochs=5):
    """(classifier, its test accuracy): read from `path` if it holds one, else trained and saved there."""
    clf = MLP(SIZES, "relu", np.random.default_rng(seed), x_train.dtype)
    if os.path.exists(path):
        try:
            clf.load_state_dict(load_checkpoint(path)["params"])
            return clf, float(np.mean(probabilities(clf, x_test).argmax(1) == y_test))
        except (CheckpointError, KeyError, ValueError) as err:
            print(f"retraining the classifier: {path} does not hold one ({err})")
    clf = train_classifier(x_train, y_train, np.random.default_rng(seed), epochs)
    accuracy = float(np.mean(probabilities(clf, x_test).argmax(1) == y_test))
    save_checkpoint(path, params=clf.state_dict(), test_accuracy=accuracy, n_train=len(x_train), epochs=epochs)
    return clf, accuracy


def histogram(probs):
    """Class counts (10,), their entropy in bits (log2 10 = 3.32 when uniform) and the mean top probability."""
    counts = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    p = counts[counts > 0] / counts.sum()
    return {"class_counts": counts.tolist(), "entropy_bits": float(np.sum(p * np.log2(1 / p))),
            "mean_confidence": float(probs.max(1).mean())}


def label_control(clf, model, rng, n_per_class=500):
    """How well a conditional VAE obeys its label: for each class c, the share of n_per_class
    prior samples decoded with label c (z ~ N(0, I)) that the classifier calls c.

    Returns {"per_class": [rate of class 0, ...], "overall": their mean, "samples_per_class": n}.
    A decoder that ignores its label draws the same images for every label, so its rates average
    1/n_classes; one that obeys it scores near the classifier's accuracy.
    """
    rates = []
    with no_grad():
        for c in range(model.n_classes):
            images = np.clip(model.sample(n_per_class, rng, np.full(n_per_class, c)), 0.0, 1.0)  # Gaussian means: unbounded
            rates.append(float(np.mean(probabilities(clf, images).argmax(1) == c)))
    return {"per_class": rates, "overall": float(np.mean(rates)), "samples_per_class": n_per_class}


def relabelled(clf, model, x, y, rng):
    """The share of images x (N, 784) of classes y whose code, decoded with another label c != y,
    the classifier calls c: near 1 when z holds only the style, lower when z carries the class too.

    The code is the posterior mean of z given (x, y); each image gets a random other label.
    """
    other = (y + rng.integers(1, model.n_classes, len(y))) % model.n_classes  # (N,), never y
    with no_grad():
        images = model.mean_image(model.decode(model.encode(x, y)[0], other))
    return float(np.mean(probabilities(clf, np.clip(images, 0.0, 1.0)).argmax(1) == other))
