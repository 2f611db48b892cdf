"""Tests for minivae.data: the IDX reader, checksums, cache and download, offline fallback, binarisation.

No test reaches the internet: an autouse fixture points every mirror at a closed local port, sends
the cache to a temporary folder, and makes any urlopen call to a host other than 127.0.0.1 fail the
test. Downloads are exercised against an http.server on 127.0.0.1 started by the test.
"""
import gzip
import hashlib
import http.server
import io
import json
import os
import socket
import struct
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from minivae import data

# A folder holding full copies of the data sets (mnist/, fashion-mnist/) in their original IDX
# files, for the tests of real data; they skip without it.
FULL_DATA = Path(os.environ.get("MINIVAE_TEST_DATA", "/nonexistent"))
PUBLISHED_MNIST_TEST_MD5 = {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}


def idx_bytes(arr, code=0x08, ndim=None):
    """Encode `arr` as an IDX file by hand (independently of the reader under test)."""
    big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, arr.ndim if ndim is None else ndim])
    return header + struct.pack(f">{arr.ndim}I", *arr.shape) + np.asarray(arr, big_endian).tobytes()


def md5(blob):
    return hashlib.md5(blob).hexdigest()


def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens, so connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Keep every test off the network and out of the user's real cache."""
    refused = closed_port_url()
    for name in list(data.DATASETS):
        monkeypatch.setitem(data.DATASETS, name, dict(data.DATASETS[name], mirrors=[refused]))
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "cache"))
    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        host = urllib.parse.urlsplit(url if isinstance(url, str) else url.full_url).hostname
        assert host == "127.0.0.1", f"test tried to reach the network: {url}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


# A tiny data set with the same layout as MNIST: 6 training and 3 test images of 2x3 pixels.
RNG = np.random.default_rng(0)
TINY_ARRAYS = {
    "train_images": RNG.integers(0, 256, (6, 2, 3), dtype=np.uint8),
    "train_labels": np.array([3, 1, 4, 1, 5, 9], np.uint8),
    "test_images": RNG.integers(0, 256, (3, 2, 3), dtype=np.uint8),
    "test_labels": np.array([2, 7, 1], np.uint8),
}
TINY_NAMES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
              "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
TINY_RAW = {role: idx_bytes(a) for role, a in TINY_ARRAYS.items()}
TINY_GZ = {role: gzip.compress(raw, mtime=0) for role, raw in TINY_RAW.items()}


@pytest.fixture
def tiny(monkeypatch):
    """Register the "tiny" data set; returns a function that sets its mirror list."""
    files = {role: (TINY_NAMES[role], md5(TINY_GZ[role]), md5(TINY_RAW[role])) for role in TINY_NAMES}

    def set_mirrors(mirrors):
        monkeypatch.setitem(data.DATASETS, "tiny", {"mirrors": list(mirrors), "files": files})

    set_mirrors([closed_port_url()])
    return set_mirrors


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 (port 0) serving `server.files` {path: bytes}; paths under
    /cut/ announce more bytes than they send, like a dropped connection. Counts requests."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            httpd.requests.append(self.path)
            body = httpd.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            cut = self.path.startswith("/cut/")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + (1000 if cut else 0)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)

        def log_message(self, *args):  # keep test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests = {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def all_files(folder):
    """Every file under `folder`, hidden temporaries included."""
    return sorted(p.name for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []


# ---------------------------------------------------------------- read_idx

@pytest.mark.parametrize("code, dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                         (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_round_trips_every_type_code(tmp_path, code, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) * (1 if code == 0x08 else -3)).astype(dtype)
    if code == 0x08:
        arr = arr.astype(np.uint8)
    path = tmp_path / "a.idx"
    path.write_bytes(idx_bytes(arr, code))
    got = data.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    arr = TINY_ARRAYS["train_images"]
    (tmp_path / "no-suffix").write_bytes(gzip.compress(idx_bytes(arr)))
    (tmp_path / "raw.gz").write_bytes(idx_bytes(arr))  # misleading name, raw content
    np.testing.assert_array_equal(data.read_idx(tmp_path / "no-suffix"), arr)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "raw.gz")), arr)
    np.testing.assert_array_equal(data.read_idx(io.BytesIO(gzip.compress(idx_bytes(arr)))), arr)
    assert data.read_idx(tmp_path / "raw.gz", ndim=3).shape == (6, 2, 3)


def test_read_idx_result_is_writable():
    got = data.read_idx(io.BytesIO(idx_bytes(TINY_ARRAYS["test_labels"])))
    got[0] = 0  # would raise on a read-only view of the file's bytes
    assert got.flags.writeable


def bad_file(tmp_path, blob, name="bad-idx3-ubyte.gz"):
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    good = gzip.compress(idx_bytes(TINY_ARRAYS["train_images"]) * 50)
    for blob in (good[: len(good) // 2], good[:20] + bytes(64) + good[84:]):
        path = bad_file(tmp_path, blob)
        with pytest.raises(data.DataError, match="corrupt gzip") as err:
            data.read_idx(path)
        assert str(path) in str(err.value) and "replace it with a good copy" in str(err.value)


def test_truncated_payload_names_expected_and_actual_bytes(tmp_path):
    path = bad_file(tmp_path, gzip.compress(idx_bytes(TINY_ARRAYS["train_images"])[:-5]))
    with pytest.raises(data.DataError) as err:
        data.read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "needs 36 payload bytes, found 31" in msg and "truncated" in msg
    assert "replace it with a good copy" in msg and "delete it" not in msg  # not a cached file: no fresh copy comes


def test_trailing_bytes_are_an_error(tmp_path):
    path = bad_file(tmp_path, idx_bytes(TINY_ARRAYS["test_labels"]) + b"junk")
    with pytest.raises(data.DataError, match=r"needs 3 payload bytes, found 7 \(trailing bytes"):
        data.read_idx(path)


def test_wrong_magic_is_an_error(tmp_path):
    path = bad_file(tmp_path, b"\x1f\x00" + idx_bytes(TINY_ARRAYS["test_labels"])[2:])
    with pytest.raises(data.DataError, match="not an IDX file .magic bytes 1f00") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(io.BytesIO(b""))


def test_unknown_type_code_is_an_error(tmp_path):
    path = bad_file(tmp_path, idx_bytes(TINY_ARRAYS["test_labels"])[:2] + b"\x07\x01" + bytes(7))
    with pytest.raises(data.DataError, match="unknown IDX type code 0x07 .known: 0x08 .uint8."):
        data.read_idx(path)


def test_wrong_number_of_dimensions_is_an_error(tmp_path):
    labels = idx_bytes(TINY_ARRAYS["test_labels"])
    with pytest.raises(data.DataError, match="header declares 1 dimensions, expected 3"):
        data.read_idx(bad_file(tmp_path, labels), ndim=3)
    with pytest.raises(data.DataError, match="header declares 0 dimensions, expected at least 1"):
        data.read_idx(bad_file(tmp_path, b"\x00\x00\x08\x00"))
    # A header promising more dimensions than the file holds is cut short, not misread.
    with pytest.raises(data.DataError, match=r"header of 9 dimensions needs 40 bytes, file has only 11 \(truncated\)"):
        data.read_idx(bad_file(tmp_path, b"\x00\x00\x08\x09" + labels[4:]))


# ---------------------------------------------------------------- registry, bundled data

def test_registry_is_complete():
    roles = {"train_images", "train_labels", "test_images", "test_labels"}
    for name in ("mnist", "fashion-mnist"):
        spec = data.DATASETS[name]
        assert set(spec["files"]) == roles
        for fname, md5_gz, md5_raw in spec["files"].values():
            assert fname.endswith("-ubyte.gz") and len(md5_gz) == len(md5_raw) == 32 and md5_gz != md5_raw
    assert data.DATASETS["mnist"]["files"]["train_images"][1] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"


def test_bundled_files_match_published_md5s():
    for fname, published in PUBLISHED_MNIST_TEST_MD5.items():
        assert md5((Path(data.BUNDLED_DIR) / fname).read_bytes()) == published
    assert (Path(data.BUNDLED_DIR) / "README.md").is_file()


# ---------------------------------------------------------------- cache dir

def test_cache_dir_honours_minivae_data_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "m"))
    assert data.cache_dir("mnist") == str(tmp_path / "m" / "mnist")
    monkeypatch.delenv("MINIVAE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data.cache_dir("mnist") == str(tmp_path / "x" / "minivae" / "mnist")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert data.cache_dir("fashion-mnist") == str(tmp_path / "h" / ".cache" / "minivae" / "fashion-mnist")


# ---------------------------------------------------------------- download

def test_download_tries_mirrors_in_order_and_caches(server, tiny, tmp_path):
    server.files = {f"/good/{TINY_NAMES[r]}": TINY_GZ[r] for r in TINY_NAMES}
    tiny([closed_port_url(), server.url + "missing/", server.url + "good/"])
    x_train, y_train, x_test, y_test, info = data.load_train_test("tiny", timeout=5)

    cache = tmp_path / "cache" / "tiny"  # MINIVAE_DATA set by the autouse fixture
    assert all_files(cache) == sorted(TINY_NAMES.values())
    assert info["downloaded"] == list(TINY_NAMES.values()) and info["source_dir"] == str(cache)
    assert info["fallback"] is False and (info["n_train"], info["n_test"]) == (6, 3)
    assert "/missing/train-images-idx3-ubyte.gz" in server.requests  # the 404 mirror was tried
    assert x_train.dtype == np.float32 and x_train.shape == (6, 6)
    np.testing.assert_array_equal(x_train * 255, TINY_ARRAYS["train_images"].reshape(6, 6))
    np.testing.assert_array_equal(y_test, [2, 7, 1])
    assert y_train.dtype == np.int64
    json.dumps(info)

    # Second call: everything comes from the cache, the server is not asked again.
    n_requests = len(server.requests)
    x, y = data.load_dataset("tiny", "test", dtype=np.float64)
    assert len(server.requests) == n_requests and x.dtype == np.float64
    np.testing.assert_array_equal(x, TINY_ARRAYS["test_images"].reshape(3, 6) / 255.0)


def test_wrong_md5_download_leaves_nothing_behind(server, tiny, tmp_path):
    server.files = {f"/{TINY_NAMES[r]}": gzip.compress(TINY_RAW[r] + b"x") for r in TINY_NAMES}
    tiny([server.url])
    with pytest.raises(data.DataUnavailable, match="checksum mismatch") as err:
        data.load_dataset("tiny", "train", timeout=5)
    assert "train-images-idx3-ubyte.gz" in err.value.reason and "\n" not in err.value.reason
    assert all_files(tmp_path / "cache") == []


def test_cut_download_leaves_nothing_behind_and_next_mirror_is_used(server, tiny, tmp_path):
    server.files = {f"/{p}/{TINY_NAMES[r]}": TINY_GZ[r] for r in TINY_NAMES for p in ("cut", "good")}
    tiny([server.url + "cut/"])
    with pytest.raises(data.DataUnavailable, match="IncompleteRead"):
        data.load_dataset("tiny", "test", timeout=5)
    assert all_files(tmp_path / "cache") == []
    tiny([server.url + "cut/", server.url + "good/"])
    x, _ = data.load_dataset("tiny", "test", timeout=5)
    assert x.shape == (3, 6)
    assert all_files(tmp_path / "cache") == sorted(TINY_NAMES[r] for r in ("test_images", "test_labels"))


def test_all_mirrors_failing_raises_data_unavailable_with_one_line_reason(server, tiny):
    tiny([closed_port_url(), server.url])
    with pytest.raises(data.DataUnavailable) as err:
        data.load_dataset("tiny", "train", timeout=5)
    reason = err.value.reason
    assert "could not download train-images-idx3-ubyte.gz" in reason and "HTTP Error 404" in reason
    assert "refused" in reason.lower() and "\n" not in reason


# ---------------------------------------------------------------- local files

def test_data_dir_is_used_first_and_unpacked_or_regzipped_files_pass_by_content_md5(tiny, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    for role, fname in TINY_NAMES.items():
        if role.startswith("train"):
            (local / fname[:-3]).write_bytes(TINY_RAW[role])  # unpacked copy
        else:  # re-compressed with another level and timestamp: different .gz MD5, same content
            blob = gzip.compress(TINY_RAW[role], compresslevel=1, mtime=12345)
            assert md5(blob) != md5(TINY_GZ[role])
            (local / fname).write_bytes(blob)
    *arrays, info = data.load_train_test("tiny", data_dir=local, download=False)
    assert info["source_dir"] == str(local) and info["downloaded"] == [] and info["n_train"] == 6
    np.testing.assert_array_equal(arrays[1], [3, 1, 4, 1, 5, 9])


def test_corrupt_local_file_names_expected_and_actual_md5(tiny, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    bad = gzip.compress(idx_bytes(TINY_ARRAYS["test_labels"][::-1]))
    (local / TINY_NAMES["test_labels"]).write_bytes(bad)
    (local / TINY_NAMES["test_images"]).write_bytes(TINY_GZ["test_images"])
    with pytest.raises(data.DataError) as err:
        data.load_dataset("tiny", "test", data_dir=local)
    msg = str(err.value)
    assert str(local / TINY_NAMES["test_labels"]) in msg and "checksum mismatch" in msg
    assert md5(bad) in msg and md5(TINY_GZ["test_labels"]) in msg and md5(TINY_RAW["test_labels"]) in msg
    assert "replace it with a good copy" in msg and "delete it" not in msg  # an explicit data_dir: no download
    # Corruption is never papered over by the offline fallback.
    (local / "t10k-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(data.DataError):
        data.load_dataset("tiny", "test", data_dir=local)


def test_incomplete_data_dir_without_download_is_a_clear_error(tiny, tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / TINY_NAMES["train_images"]).write_bytes(TINY_GZ["train_images"])
    missing = "train-labels-idx1-ubyte.gz not found in .*local or .*cache.* and download=False"
    with pytest.raises(data.DataUnavailable, match=missing):
        data.load_dataset("tiny", "train", data_dir=tmp_path / "local", download=False)
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_dataset("tiny", "train", data_dir=tmp_path / "typo")


def test_bad_arguments_are_clear_errors(tiny):
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        data.load_dataset("cifar")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.load_dataset("tiny", "validation")
    with pytest.raises(ValueError, match="dtype must be a float type"):
        data.load_dataset("tiny", dtype=np.uint8)


# ---------------------------------------------------------------- offline fallback

def test_offline_fallback_uses_bundled_test_set(tmp_path):
    with pytest.warns(UserWarning, match="bundled MNIST test set"):
        x_train, y_train, x_test, y_test, info = data.load_train_test("mnist", timeout=5)
    assert info["fallback"] is True and "could not download train-images-idx3-ubyte.gz" in info["reason"]
    assert (info["n_train"], info["n_test"]) == (8000, 2000) and info["source_dir"] == data.BUNDLED_DIR
    assert x_train.shape == (8000, 784) and x_test.shape == (2000, 784) and x_train.dtype == np.float32
    assert y_train.shape == (8000,) and set(np.unique(y_test)) == set(range(10))
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    # The documented split: images 4, 9, 14, ... held out, every other image used for training.
    labels = data.read_idx(Path(data.BUNDLED_DIR) / "t10k-labels-idx1-ubyte.gz")
    images = data.read_idx(Path(data.BUNDLED_DIR) / "t10k-images-idx3-ubyte.gz").reshape(10000, 784)
    np.testing.assert_array_equal(y_test, labels[4::5])
    np.testing.assert_array_equal(y_train, np.delete(labels, np.s_[4::5]))
    np.testing.assert_array_equal(x_test, images[4::5] / np.float32(255))
    json.loads(json.dumps(info))
    assert all_files(tmp_path / "cache") == []
    # No download allowed: the same fallback, with the reason saying so.
    with pytest.warns(UserWarning):
        *_, info = data.load_train_test("mnist", download=False)
    assert info["fallback"] is True and "download=False" in info["reason"]


def test_no_fallback_when_disabled_or_not_mnist(tmp_path):
    with pytest.raises(data.DataUnavailable):
        data.load_train_test("mnist", download=False, fallback=False)
    with pytest.raises(data.DataUnavailable):
        data.load_train_test("fashion-mnist", download=False)


# ---------------------------------------------------------------- real data (skipped when absent)

@pytest.mark.skipif(not (FULL_DATA / "mnist").is_dir(), reason="set MINIVAE_TEST_DATA to a folder with mnist/ to run")
def test_full_mnist_from_local_folder():
    x_train, y_train, x_test, y_test, info = data.load_train_test(data_dir=FULL_DATA / "mnist", download=False)
    assert (x_train.shape, x_test.shape) == ((60000, 784), (10000, 784))
    assert info["fallback"] is False and info["source_dir"] == str(FULL_DATA / "mnist")
    np.testing.assert_array_equal(y_train[:5], [5, 0, 4, 1, 9])
    np.testing.assert_array_equal(np.bincount(y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])


@pytest.mark.skipif(not (FULL_DATA / "fashion-mnist").is_dir(), reason="set MINIVAE_TEST_DATA to a folder with fashion-mnist/ to run")
def test_fashion_mnist_repacked_gz_passes_by_content_md5():
    blob = (FULL_DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    assert md5(blob) != data.DATASETS["fashion-mnist"]["files"]["test_labels"][1]  # really the repacked copy
    x, y = data.load_dataset("fashion-mnist", "train", data_dir=FULL_DATA / "fashion-mnist", download=False)
    assert x.shape == (60000, 784) and np.bincount(y).tolist() == [6000] * 10


# ---------------------------------------------------------------- binarize, batches

def test_binarize_modes():
    rng = np.random.default_rng(1)
    x = rng.random((500, 40)).astype(np.float32)
    assert data.binarize(x, "none") is x
    b = data.binarize(x, "dynamic", np.random.default_rng(2))
    assert b.dtype == np.float32 and b.shape == x.shape and set(np.unique(b)) == {0.0, 1.0}
    stderr = np.sqrt(np.mean(x * (1 - x)) / x.size)
    assert abs(b.mean() - x.mean()) < 5 * stderr
    # Bernoulli(x) per pixel: pixels near 0 are almost never on, pixels near 1 almost always.
    assert b[x < 0.05].mean() < 0.1 and b[x > 0.95].mean() > 0.9
    np.testing.assert_array_equal(b, data.binarize(x, "static", np.random.default_rng(2)))
    assert not np.array_equal(b, data.binarize(x, "dynamic", rng))
    t = data.binarize(np.array([[0.0, 0.5, 0.5001, 1.0]]), "threshold")
    assert t.dtype == np.float64
    np.testing.assert_array_equal(t, [[0.0, 0.0, 1.0, 1.0]])
    edges = data.binarize(np.array([0.0, 1.0] * 1000), "dynamic", rng)
    np.testing.assert_array_equal(edges, [0.0, 1.0] * 1000)


def test_binarize_errors():
    x = np.full((2, 3), 0.5)
    with pytest.raises(ValueError, match="unknown binarisation mode 'bernoulli'"):
        data.binarize(x, "bernoulli")
    with pytest.raises(ValueError, match="pass rng=np.random.default_rng"):
        data.binarize(x, "dynamic")
    with pytest.raises(ValueError, match="expects floats in"):
        data.binarize(np.zeros(3, np.uint8), "threshold")


def test_batches():
    chunks = list(data.batches(10, 4))
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(c) for c in data.batches(10, 4, drop_last=True)] == [4, 4]
    shuffled = np.concatenate(list(data.batches(100, 32, rng=np.random.default_rng(0))))
    assert sorted(shuffled.tolist()) == list(range(100)) and shuffled.tolist() != list(range(100))
    again = np.concatenate(list(data.batches(100, 32, rng=np.random.default_rng(0))))
    np.testing.assert_array_equal(shuffled, again)
    assert list(data.batches(0, 8)) == []
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            list(data.batches(10, bad))
