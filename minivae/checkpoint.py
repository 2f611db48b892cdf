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
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["__meta__"]))
            arrays = {k: archive[k] for k in archive.files if k != "__meta__"}
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is not a readable minivae checkpoint ({type(err).__name__}: "
                              f"{err}); it may be truncated or from another program") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return _unflatten(meta["state"], arrays)
