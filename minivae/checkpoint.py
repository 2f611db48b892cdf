"""Checkpoints: parameters, optimiser state, config, step and anything else, in one .npz file.

The file is a plain NumPy archive (no pickle, so loading it cannot run code): every array is
stored under a path-like key ("params/encoder.layers.0.W", "optimizer/m/0", ...) and everything
else (numbers, strings, the RNG state, the config) as one JSON document under "__meta__".
It is written atomically, so a crash mid-save leaves the previous checkpoint intact.
"""
import json
import zipfile

import numpy as np

from .fileio import atomic_writer

FORMAT = "minivae-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


def _flatten(obj, prefix, arrays):
    """Split a nested dict/list into arrays (stored by key) and a JSON-able skeleton."""
    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{prefix}/{k}", arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unflatten(skeleton, arrays):
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__array__"}:
            return arrays[skeleton["__array__"]]
        return {k: _unflatten(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, arrays) for v in skeleton]
    return skeleton


def save_checkpoint(path, **state):
    """Atomically write `state` (nested dicts/lists of arrays, numbers and strings) to `path`."""
    arrays = {}
    skeleton = _flatten(state, "", arrays)
    meta = json.dumps({"format": FORMAT, "state": skeleton})
    with atomic_writer(path, "wb") as f:
        np.savez(f, __meta__=np.array(meta), **arrays)


def load_checkpoint(path):
    """Read a checkpoint written by save_checkpoint; a damaged file raises CheckpointError."""
    opened = False  # np.load took the file for an .npz archive
    try:
        with np.load(path, allow_pickle=False) as archive:
            opened = True
            arrays = {k: archive[k] for k in archive.files}  # an object array anywhere raises ValueError here
            meta = json.loads(str(arrays.pop("__meta__")))
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except ValueError as err:  # numpy's text names allow_pickle, which a checkpoint never needs
        if opened and "pickle" in str(err):  # an object array inside an .npz
            raise CheckpointError(f"{path} is not a minivae checkpoint: it holds pickled Python objects, which "
                                  "minivae never loads (unpickling can run code)") from None
        why = "not a NumPy .npz archive" if "pickle" in str(err) else f"ValueError: {err}"  # numpy's guess: a pickle
        raise CheckpointError(f"{path} is not a readable minivae checkpoint ({why}); it may be truncated "
                              "or from another program") from None
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is not a readable minivae checkpoint ({type(err).__name__}: "
                              f"{err}); it may be truncated or from another program") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} has format {found!r}, expected {FORMAT!r}")
    try:
        state = _unflatten(meta["state"], arrays)
    except KeyError as err:
        raise CheckpointError(f"{path} is damaged: its index names an array {err} it does not hold") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is damaged: it holds a {type(state).__name__}, not a dict of entries")
    return state


def check_fields(state, fields, path):
    """Raise CheckpointError unless `state` has every key of `fields` with a value of its type(s).

    `fields` maps a key to a type or a tuple of types (as isinstance takes them); True and False
    do not count as numbers.
    """
    for key, types in fields.items():
        if key not in state:
            raise CheckpointError(f"{path} has no {key!r} entry: it was not written by this script, or is damaged")
        value, types = state[key], types if isinstance(types, tuple) else (types,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__} ({str(value)[:40]}), "
                                  f"expected {wanted}")



def check_model_state(state, path, model, rng):
    """Raise CheckpointError unless a training checkpoint's counters, parameters and RNG fit `model` and `rng`.

    Checked: epoch and step >= 0 with one history entry per epoch; the same parameter names
    as model.state_dict(), each an array of the model's shape and dtype; an RNG state of the
    same bit generator.
    """
    if not (state["step"] >= 0 and len(state["history"]) == state["epoch"] >= 0):
        raise CheckpointError(f"{path} is inconsistent: epoch {state['epoch']}, step {state['step']}, "
                              f"{len(state['history'])} epochs of history")
    params, ours = state["params"], model.state_dict()
    extra, missing = sorted(set(params) - set(ours)), sorted(set(ours) - set(params))
    if extra or missing:
        raise CheckpointError(f"{path} does not fit this model (a different model?): " + "; ".join(
            filter(None, [missing and f"it lacks {missing[:3]}", extra and f"this model has no {extra[:3]}"])))
    for name, p in ours.items():
        q = params[name]
        if not (isinstance(q, np.ndarray) and q.shape == p.shape and q.dtype == p.dtype):
            got = f"{q.dtype} {q.shape}" if isinstance(q, np.ndarray) else type(q).__name__
            raise CheckpointError(f"{path}: parameter {name} is {got}, this model's is {p.dtype} {p.shape}")
    kind = type(rng.bit_generator).__name__
    if state["rng"].get("bit_generator") != kind:
        raise CheckpointError(f"{path}: the RNG state is for {state['rng'].get('bit_generator')!r}, not {kind}")


# ------------------------------------------------------------------ what kind of model a checkpoint holds
CONFIG_DEFAULTS = {  # kind -> config entries that older checkpoints lack, as the runs that wrote them had them
    "mlp_vae": {"x_logvar": "learned-scalar", "conditional": False, "dtype": "float32", "label_into": "input"},
}


def fill_defaults(config, kind):
    """Add to `config` (in place) the CONFIG_DEFAULTS entries of `kind` it lacks; return those added."""
    missing = {key: value for key, value in CONFIG_DEFAULTS.get(kind, {}).items() if key not in config}
    config.update(missing)
    return missing


def model_kind(state):
    """The config's "model" entry; for a config without one, what the checkpoint's entries say."""
    config = state["config"]
    if "model" in config:
        return config["model"]
    return "sentence_vae" if "vocab" in state else "mlp_vae" if "dataset" in config else None
