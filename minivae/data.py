"""MNIST-style data sets: read IDX files, verify, download, cache, and fall back to bundled data.

Reading order: `read_idx` (the file format), `DATASETS` (what to fetch and its checksums),
`load_dataset` / `load_train_test` (what a script calls), then `binarize` and `batches`
(what the training loop calls every step).

Where files are looked for, per file, in this order:
  1. `data_dir`, if given (a folder holding the four .gz files, or their uncompressed versions);
  2. the cache: `$MINIVAE_DATA/<name>` if set, else `$XDG_CACHE_HOME/minivae/<name>`, else
     `~/.cache/minivae/<name>`;
  3. a download from the data set's mirrors, in order, into the cache.
Every file is checked against the published MD5 of the .gz OR the MD5 of its uncompressed content
(some distributions, e.g. Debian's, re-compress the same content, which changes the .gz MD5).

Offline: `load_train_test("mnist")` falls back to the MNIST test set shipped in
`minivae/bundled/` (see its README for the fixed 8,000 / 2,000 split) and says so in its metadata.
"""
import gzip
import hashlib
import http.client
import math
import os
import urllib.error
import urllib.request
import warnings
import zlib

import numpy as np

from .fileio import atomic_writer


class DataError(ValueError):
    """A data file is malformed or fails its checksum (the message names the file and the fix)."""


class DataUnavailable(RuntimeError):
    """The data set is neither on disk nor downloadable; `reason` is a one-line explanation."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


# IDX format (LeCun et al.): 2 zero bytes, a type code, the number of dimensions, then one
# big-endian uint32 per dimension, then the values in C order, big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
def _fix(path):
    """The end of a bad-file message: what to do about the file at `path`.

    A file in minivae's cache can simply be deleted (the next run downloads a fresh copy); one in
    a folder the user chose (--data-dir) is not downloaded again, so it must be replaced.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if any(folder == os.path.abspath(cache_dir(name)) for name in DATASETS):
        return "The file is damaged or is not this IDX file: delete it (minivae downloads a fresh copy) or replace it with a good copy."
    return "The file is damaged or is not this IDX file: replace it with a good copy."

# Per data set: mirror base URLs, tried in order, and per role (file name, MD5 of the .gz, MD5 of
# the uncompressed content). The .gz MD5s are the ones published with torchvision.
DATASETS = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        "files": {
            "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
            "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
            "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
            "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
        },
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "files": {
            "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
            "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
            "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
            "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
        },
    },
}
BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled")
BINARIZE_MODES = ("none", "dynamic", "static", "threshold")


def _gunzip(blob, name):
    """Return the decompressed bytes if `blob` starts with the gzip magic bytes, else `blob`."""
    if blob[:2] != b"\x1f\x8b":
        return blob
    try:
        return gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{name}: corrupt gzip stream ({err}). {_fix(name)}") from None


def _parse_idx(content, name, ndim=None):
    """Decode the uncompressed bytes of an IDX file into an array of native byte order."""
    if len(content) < 4 or content[:2] != b"\x00\x00":
        raise DataError(f"{name}: not an IDX file (magic bytes {content[:4].hex() or 'missing'}, "
                        f"expected 0000 followed by a type code and a dimension count). {_fix(name)}")
    code, n_dims = content[2], content[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x} ({np.dtype(t).name})" for c, t in _IDX_DTYPES.items())
        raise DataError(f"{name}: unknown IDX type code 0x{code:02x} (known: {known}). {_fix(name)}")
    if n_dims == 0 or (ndim is not None and n_dims != ndim):
        wanted = f"expected {ndim}" if ndim is not None else "expected at least 1"
        raise DataError(f"{name}: header declares {n_dims} dimensions, {wanted}. {_fix(name)}")
    header = 4 + 4 * n_dims
    if len(content) < header:
        raise DataError(f"{name}: header of {n_dims} dimensions needs {header} bytes, file has only "
                        f"{len(content)} (truncated). {_fix(name)}")
    shape = tuple(int(d) for d in np.frombuffer(content, ">u4", n_dims, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected, actual = math.prod(shape) * dtype.itemsize, len(content) - header
    if actual != expected:
        what = "truncated" if actual < expected else "trailing bytes after the data"
        raise DataError(f"{name}: shape {shape} of {dtype.name} needs {expected} payload bytes, "
                        f"found {actual} ({what}). {_fix(name)}")
    return np.frombuffer(content, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path_or_fileobj, ndim=None):
    """Read an IDX file (gzip-compressed or raw, told apart by its first bytes) into an ndarray.

    `ndim`, if given, is the number of dimensions the file must have (3 for images, 1 for labels).
    Raises DataError, naming the file, for a corrupt gzip stream, a bad header, an unknown type
    code, or a payload whose length differs from the product of the dimensions.
    """
    if hasattr(path_or_fileobj, "read"):
        name, blob = getattr(path_or_fileobj, "name", "<file object>"), path_or_fileobj.read()
    else:
        name = os.fspath(path_or_fileobj)
        with open(name, "rb") as f:
            blob = f.read()
    return _parse_idx(_gunzip(blob, name), name, ndim)


def _md5(blob):
    return hashlib.md5(blob).hexdigest()


def _verified_content(blob, name, md5_gz, md5_raw):
    """Return the uncompressed content of `blob` if its .gz MD5 or its content MD5 is the published one."""
    content = _gunzip(blob, name)
    actual_gz = _md5(blob)
    if actual_gz == md5_gz:
        return content
    actual_raw = actual_gz if content is blob else _md5(content)
    if actual_raw != md5_raw:
        raise DataError(f"{name}: checksum mismatch: MD5 of the file is {actual_gz} and of its content "
                        f"{actual_raw}, expected {md5_gz} (.gz) or {md5_raw} (uncompressed). {_fix(name)}")
    return content


def cache_dir(name):
    """Return the folder where data set `name` is cached: $MINIVAE_DATA/<name>, else the user cache."""
    if os.environ.get("MINIVAE_DATA"):
        return os.path.join(os.environ["MINIVAE_DATA"], name)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minivae", name)


def _download(fname, mirrors, directory, md5_gz, md5_raw, timeout):
    """Fetch `fname` from the first mirror that serves it with the right checksum; return its path."""
    failures = []
    for base in mirrors:
        url = base + fname
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                blob = response.read()
            _verified_content(blob, url, md5_gz, md5_raw)
        # URLError, HTTPError and timeouts are OSErrors; a cut transfer is an IncompleteRead
        # (HTTPException); a wrong checksum (DataError) or a malformed URL is a ValueError.
        except (OSError, http.client.HTTPException, ValueError) as err:
            why = str(err.reason if type(err) is urllib.error.URLError else err).strip()
            failures.append(f"{url}: {why.splitlines()[0] if why else type(err).__name__}")
            continue
        path = os.path.join(directory, fname)
        with atomic_writer(path, "wb") as f:  # the verified bytes only; nothing partial on disk
            f.write(blob)
        return path
    raise DataUnavailable(f"could not download {fname}: " + "; ".join(failures or ["no mirrors"]))


def _spec(name):
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def _resolve(name, roles, data_dir, download, timeout):
    """Find (or download into the cache) the files of `roles`; return ({role: path}, [downloaded names])."""
    spec = _spec(name)
    if data_dir is not None and not os.path.isdir(data_dir):
        what = "is a file, not a folder" if os.path.exists(data_dir) else "does not exist"
        raise DataError(f"data_dir {os.fspath(data_dir)!r} {what}; pass the folder that holds the "
                        f"{name} .gz files, or leave data_dir out to use the cache and download.")
    folders = [os.fspath(d) for d in (data_dir, cache_dir(name)) if d is not None]
    paths, downloaded = {}, []
    for role in roles:
        fname, md5_gz, md5_raw = spec["files"][role]
        # An unpacked copy (file name without .gz) is as good: it is checked by its content MD5.
        found = [os.path.join(d, f) for d in folders for f in (fname, fname[:-3])]
        found = [p for p in found if os.path.isfile(p)]
        if found:
            paths[role] = found[0]
        elif download:
            paths[role] = _download(fname, spec["mirrors"], folders[-1], md5_gz, md5_raw, timeout)
            downloaded.append(fname)
        else:
            raise DataUnavailable(f"{fname} not found in {' or '.join(folders)} and download=False")
    return paths, downloaded


def check_data_dir(name, data_dir):
    """Raise DataError unless `data_dir` is a folder holding all four files of data set `name`.

    Each file may be the .gz or its unpacked copy; the message names every missing file. The
    training script calls this for an explicit --data-dir, which must be complete: the bundled
    fallback is only for runs that asked for no particular data.
    """
    _resolve(name, (), data_dir, False, 0)  # the folder itself
    files = [f for f, _, _ in _spec(name)["files"].values()]
    missing = [f for f in files if not any(os.path.isfile(os.path.join(data_dir, g)) for g in (f, f[:-3]))]
    if missing:
        raise DataError(f"{os.fspath(data_dir)!r} lacks {', '.join(missing)} (or the unpacked copies); it "
                        f"must hold all four {name} files: {', '.join(files)}")


def _read_verified(name, role, path):
    """Read one resolved file: checksum, then decode (images must be 3-d, labels 1-d)."""
    _, md5_gz, md5_raw = DATASETS[name]["files"][role]
    with open(path, "rb") as f:
        content = _verified_content(f.read(), path, md5_gz, md5_raw)
    return _parse_idx(content, path, ndim=3 if role.endswith("images") else 1)


def _read_split(name, paths, split, dtype):
    """Read and check the images and labels of `split` ("train" or "test") from resolved paths."""
    images, labels = (_read_verified(name, f"{split}_{k}", paths[f"{split}_{k}"]) for k in ("images", "labels"))
    return _to_xy(images, labels, dtype, paths[f"{split}_images"])


def _to_xy(images, labels, dtype, source):
    """Images (N, H, W) uint8 -> x (N, H*W) floats in [0, 1]; labels -> y (N,) int64."""
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels; the files do not belong together.")
    x = images.reshape(len(images), -1).astype(dtype)
    x /= 255  # in place, so float32 stays float32
    return x, labels.astype(np.int64)


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a float type such as np.float32 or np.float64, got {dtype}")
    return dtype


def load_dataset(name="mnist", split="train", data_dir=None, download=True, dtype=np.float32, timeout=30.0):
    """Return (x, y) for one split: x (N, 784) floats in [0, 1] of `dtype`, y (N,) int64 labels.

    `name` is a key of DATASETS ("mnist", "fashion-mnist"); `split` is "train" or "test".
    Files come from `data_dir`, else the cache, else are downloaded (see the module docstring).
    Raises DataUnavailable if a file is missing and cannot be downloaded, DataError if a file on
    disk is corrupt. `timeout` is in seconds, per mirror.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    dtype = _float_dtype(dtype)
    roles = (f"{split}_images", f"{split}_labels")
    paths, _ = _resolve(name, roles, data_dir, download, timeout)
    return _read_split(name, paths, split, dtype)


def load_train_test(name="mnist", data_dir=None, download=True, fallback=True, dtype=np.float32, timeout=30.0):
    """Return (x_train, y_train, x_test, y_test, info) with info a JSON-serialisable dict of provenance.

    Like load_dataset for both splits. If the full set is unavailable (DataUnavailable), `name` is
    "mnist", `fallback` is true and no `data_dir` was given, warns and returns the bundled MNIST
    test set instead: the 2,000 images with index % 5 == 4 as the test split, the other 8,000 as
    the training split, and
    info["fallback"] = True with info["reason"] saying why. Corrupt files still raise DataError.
    """
    dtype = _float_dtype(dtype)
    roles = ("train_images", "train_labels", "test_images", "test_labels")
    try:
        paths, downloaded = _resolve(name, roles, data_dir, download, timeout)
    except DataUnavailable as err:
        if not (fallback and name == "mnist" and data_dir is None):
            raise
        warnings.warn(f"full MNIST unavailable ({err.reason}); using the bundled MNIST test set, "
                      "split 8,000 train / 2,000 test", stacklevel=2)
        return _bundled_fallback(dtype, err.reason)
    x_train, y_train = _read_split(name, paths, "train", dtype)
    x_test, y_test = _read_split(name, paths, "test", dtype)
    files = [paths[r] for r in roles]
    info = {"dataset": name, "source_dir": os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in files]),
            "files": files, "downloaded": downloaded, "split": "official train/test split",
            "n_train": len(x_train), "n_test": len(x_test), "fallback": False, "reason": None}
    return x_train, y_train, x_test, y_test, info


def _bundled_fallback(dtype, reason):
    """The bundled MNIST test set, split without randomness into 8,000 train / 2,000 test."""
    paths = {r: os.path.join(BUNDLED_DIR, DATASETS["mnist"]["files"][r][0]) for r in ("test_images", "test_labels")}
    x, y = _read_split("mnist", paths, "test", dtype)
    # Interleaved, not first/last: the first 5,000 MNIST test images come from different
    # (cleaner) writers than the last 5,000, so both splits should sample both halves.
    held_out = np.arange(len(x)) % 5 == 4
    info = {"dataset": "mnist", "source_dir": BUNDLED_DIR, "files": list(paths.values()), "downloaded": [],
            "split": "bundled MNIST test set: index % 5 == 4 held out as test, the rest train",
            "n_train": int((~held_out).sum()), "n_test": int(held_out.sum()), "fallback": True, "reason": reason}
    return x[~held_out], y[~held_out], x[held_out], y[held_out], info


def binarize(x, mode, rng=None):
    """Map grey levels in [0, 1] to pixels in {0, 1} (same dtype as x), by `mode`.

    "none": x itself (grayscale, for the Bernoulli "BCE" likelihood on [0, 1] targets).
    "dynamic": a fresh sample b ~ Bernoulli(x), i.e. b = (u < x) with u ~ U[0, 1); the training
      loop calls this on every batch, so the model sees a new binarisation each epoch.
    "static": the same Bernoulli(x) sample; the caller applies it ONCE with a seeded rng and keeps
      the result (e.g. the test set for a reported NLL), so the data is a fixed binary set.
    "threshold": b = (x > 0.5), deterministic.
    Reference: Salakhutdinov & Murray 2008 (static binarised MNIST); Burda et al. 2016,
    arXiv:1509.00519, Sec. 5 (dynamic binarisation).
    """
    if mode not in BINARIZE_MODES:
        raise ValueError(f"unknown binarisation mode {mode!r}; choose one of {BINARIZE_MODES}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"binarize expects floats in [0, 1], got dtype {x.dtype}; load data with load_dataset")
    if mode == "none":
        return x
    if mode == "threshold":
        return (x > 0.5).astype(x.dtype)
    if rng is None:
        raise ValueError(f"binarize mode {mode!r} samples noise: pass rng=np.random.default_rng(seed)")
    # Chunked so binarising all 60,000 training images does not allocate 47M uniforms at once.
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=x.dtype)
    u_dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    for i in range(0, flat.size, 1 << 20):
        chunk = flat[i:i + (1 << 20)]
        out[i:i + len(chunk)] = rng.random(len(chunk), dtype=u_dtype) < chunk
    return out.reshape(x.shape)


def batches(n, batch_size, rng=None, drop_last=False):
    """Yield index arrays covering range(n) in chunks of `batch_size`, shuffled if `rng` is given.

    The last batch is smaller when batch_size does not divide n, unless drop_last is true.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer (the number of examples), got {n!r}")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
