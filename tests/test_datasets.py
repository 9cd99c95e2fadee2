"""lipcert.datasets: real files, lookup order, checksums, downloads (offline) and user arrays."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import pytest

from lipcert import datasets
from lipcert.datasets import download as download_module
from lipcert.datasets import locate, registry
from lipcert.datasets.cifar import parse_batch, parse_eran_csv
from lipcert.datasets.idx import parse_idx
from lipcert.errors import DatasetError

MNIST_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No LIPCERT_DATA, a cache and a system folder under tmp_path, and no network."""
    monkeypatch.delenv("LIPCERT_DATA", raising=False)
    for var in ("XDG_CACHE_HOME", "HOME", "LOCALAPPDATA", "USERPROFILE"):
        monkeypatch.setenv(var, str(tmp_path / "home"))
    monkeypatch.setattr(locate, "SYSTEM_DIR", tmp_path / "system")

    def offline(url: str, timeout: float) -> Any:
        raise URLError("no network in tests")

    monkeypatch.setattr(download_module, "urlopen", offline)
    assert tmp_path in datasets.cache_dir().parents
    return tmp_path


def copy_files(src: Path, dest: Path, names: tuple[str, ...]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(src / n, dest / n)
    return dest


def raw_idx(path: Path) -> np.ndarray:
    """Independent reader (the README's sketch): the uint8 content of an IDX .gz file."""
    b = gzip.open(path, "rb").read()
    n = int.from_bytes(b[4:8], "big")
    return np.frombuffer(b, np.uint8, offset=16).reshape(n, 28, 28) if b[3] == 3 else np.frombuffer(b, np.uint8, offset=8)


# --- registry -------------------------------------------------------------------------------------------


def test_registry_metadata_is_consistent() -> None:
    assert datasets.names() == ("mnist", "fashion-mnist", "cifar10")
    for name in datasets.names():
        meta = datasets.info(name)
        assert meta.num_classes == len(datasets.classes(name)) == 10
        assert len(meta.mean) == len(meta.std) == meta.input_shape[0]
        assert set(meta.splits) == {"test", "train"}
        for sources in meta.sources.values():
            assert sources[0].downloadable
    assert datasets.info("CIFAR-10") is datasets.info("cifar10")
    assert datasets.info("Fashion_MNIST").name == "fashion-mnist"
    assert datasets.classes("fashion-mnist")[9] == "Ankle boot"
    assert datasets.classes("cifar10")[3] == "cat"


def test_unknown_name_and_split_are_named_errors(isolated: Path) -> None:
    with pytest.raises(DatasetError, match="known data sets: mnist, fashion-mnist, cifar10"):
        datasets.load("imagenet")
    with pytest.raises(DatasetError, match="splits are: test, train"):
        datasets.load("mnist", split="validation")
    with pytest.raises(DatasetError, match="limit must be a positive integer"):
        datasets.load("mnist", limit=0)


# --- real files -----------------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize("name, first, counts", [
    ("mnist", [7, 2, 1, 0, 4, 1, 4, 9, 5, 9], [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
    ("fashion-mnist", [9, 2, 1, 1, 6, 1, 4, 6, 5, 7], [1000] * 10),
])
def test_idx_test_sets(shared_data: Path, isolated: Path, name: str, first: list[int], counts: list[int]) -> None:
    data = datasets.load(name, root=shared_data, download=False)
    x, y = data
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert 0.0 <= x.min() < x.max() <= 1.0
    assert y[:10].tolist() == first
    assert np.bincount(y, minlength=10).tolist() == counts
    folder = shared_data / "datasets" / name
    assert data.source_files == tuple(str(folder / f) for f in MNIST_TEST)
    np.testing.assert_array_equal(np.rint(x[:50, 0] * 255).astype(np.uint8), raw_idx(folder / MNIST_TEST[0])[:50])
    assert (data.n, data.total, data.verified, data.note) == (10000, 10000, True, "")
    assert data.info is datasets.info(name)


@pytest.mark.data
def test_fashion_mnist_train_recompressed_by_debian(shared_data: Path, isolated: Path) -> None:
    """The .gz md5 differs from upstream's; the decompressed content's md5 is what verifies."""
    images = shared_data / "datasets" / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    official = registry.FASHION_MNIST.sources["train"][0].files[0].digests[0]
    assert f"md5:{hashlib.md5(images.read_bytes()).hexdigest()}" != official
    x, y = datasets.load("fashion-mnist", split="train", root=shared_data, download=False)
    assert x.shape == (60000, 1, 28, 28)
    assert y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert np.bincount(y).tolist() == [6000] * 10


@pytest.mark.data
def test_cifar10_falls_back_to_eran_csv(shared_data: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPCERT_DATA", str(shared_data))  # a folder holding datasets/
    data = datasets.load("cifar10", limit=1000, download=False)
    x, y = data
    assert x.shape == (100, 3, 32, 32) and x.dtype == np.float32
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert (data.n, data.total) == (100, 100)
    assert "first 100" in data.note and "only 100 are available" in data.note
    csv = shared_data / "datasets" / "cifar10" / "cifar10_test_first100.csv"
    assert data.source_files == (str(csv),)
    row = np.loadtxt(csv, delimiter=",", dtype=np.int64, max_rows=1)
    np.testing.assert_array_equal(np.rint(x[0] * 255), row[1:].reshape(32, 32, 3).transpose(2, 0, 1))


@pytest.mark.data
def test_limit_takes_the_first_inputs(shared_data: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPCERT_DATA", str(shared_data / "datasets"))
    full = datasets.load("mnist", download=False)
    part = datasets.load("mnist", limit=7, download=False)
    assert (part.n, part.total, len(part)) == (7, 10000, 7)
    np.testing.assert_array_equal(part.x, full.x[:7])
    np.testing.assert_array_equal(part.y, full.y[:7])
    assert "n=7 of 10000" in repr(part)


# --- lookup order, checksums, missing files -------------------------------------------------------------


@pytest.mark.data
def test_lookup_order_root_env_cache_system(shared_data: Path, isolated: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = shared_data / "datasets" / "mnist"
    places = {p: copy_files(src, isolated / p / "mnist", MNIST_TEST) for p in ("root", "env", "system")}
    cache = copy_files(src, datasets.cache_dir() / "mnist", MNIST_TEST)
    monkeypatch.setenv("LIPCERT_DATA", str(isolated / "env"))

    def folder() -> Path:
        return Path(datasets.load("mnist", root=isolated / "root", limit=1, download=False).source_files[0]).parent

    assert folder() == places["root"]
    shutil.rmtree(places["root"])
    assert folder() == places["env"]
    monkeypatch.delenv("LIPCERT_DATA")
    assert folder() == cache
    shutil.rmtree(cache)
    assert folder() == places["system"]


@pytest.mark.data
def test_corrupt_copy_fails_its_checksum(shared_data: Path, isolated: Path) -> None:
    root = copy_files(shared_data / "datasets" / "mnist", isolated / "root" / "mnist", MNIST_TEST)
    labels = root / MNIST_TEST[1]
    # valid gzip, wrong content: the Fashion-MNIST labels under the MNIST name
    shutil.copy(shared_data / "datasets" / "fashion-mnist" / MNIST_TEST[1], labels)
    with pytest.raises(DatasetError, match=f"{labels}.*failed its checksum.*ec29112dd5afa0611ce80d1b7f02629c"):
        datasets.load("mnist", root=isolated / "root", download=False)
    # a flipped byte in the compressed stream
    data = bytearray((shared_data / "datasets" / "mnist" / MNIST_TEST[1]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    labels.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="corrupt") as err:
        datasets.load("mnist", root=isolated / "root", download=False)
    assert str(labels) in str(err.value)


def test_missing_file_names_the_file_and_the_folders(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPCERT_DATA", str(isolated / "env"))
    with pytest.raises(DatasetError) as err:
        datasets.load("mnist", split="train", root=isolated / "root", download=False)
    message = str(err.value)
    for file_name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        assert file_name in message
    for d in datasets.search_dirs(isolated / "root"):
        assert str(d / "mnist") in message
    assert str(isolated / "env" / "datasets" / "mnist") in message
    assert "ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz" in message
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz.*or else cifar10_test.csv.*Downloading failed.*"
                                           "no network in tests"):
        datasets.load("cifar10", root=isolated / "root")


# --- downloads (offline: local files behind the canonical URLs) ------------------------------------------


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, Path]) -> list[str]:
    """Answer each canonical URL with a file:// URL of a local file; returns the URLs requested."""
    requested: list[str] = []

    def opener(url: str, timeout: float) -> Any:
        requested.append(url)
        if url not in files:
            raise URLError(f"not served: {url}")
        return urllib.request.urlopen(files[url].resolve().as_uri(), timeout=timeout)

    monkeypatch.setattr(download_module, "urlopen", opener)
    return requested


@pytest.mark.data
def test_download_is_verified_and_cached(shared_data: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = shared_data / "datasets" / "mnist"
    requested = serve(monkeypatch, {registry.MNIST_URL + f: src / f for f in MNIST_TEST})
    data = datasets.load("mnist", limit=3)
    cached = datasets.cache_dir() / "mnist"
    assert data.source_files == tuple(str(cached / f) for f in MNIST_TEST)
    assert data.y.tolist() == [7, 2, 1]
    assert requested == [registry.MNIST_URL + f for f in MNIST_TEST]
    assert sorted(p.name for p in cached.iterdir()) == sorted(MNIST_TEST)
    assert datasets.load("mnist", limit=3).source_files == data.source_files
    assert len(requested) == 2  # the second load read the cache


@pytest.mark.data
def test_download_with_bad_checksum_is_not_kept(shared_data: Path, isolated: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = shared_data / "datasets" / "fashion-mnist" / MNIST_TEST[0]
    serve(monkeypatch, {registry.MNIST_URL + MNIST_TEST[0]: wrong})
    with pytest.raises(DatasetError, match="Downloading failed.*failed its checksum.*not kept"):
        datasets.load("mnist")
    assert not (datasets.cache_dir() / "mnist").exists()  # nothing kept, not even an empty folder


def test_download_function_with_file_url(tmp_path: Path, rng: np.random.Generator) -> None:
    payload = rng.bytes(3000)
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    dest = tmp_path / "out" / "file.bin"
    good = (f"sha256:{hashlib.sha256(payload).hexdigest()}",)
    assert download_module.download(src.as_uri(), dest, good) == dest
    assert dest.read_bytes() == payload
    dest.unlink()
    with pytest.raises(DatasetError, match="failed its checksum"):
        download_module.download(src.as_uri(), dest, (f"md5:{hashlib.md5(b'other').hexdigest()}",))
    with pytest.raises(DatasetError, match="could not download"):
        download_module.download((tmp_path / "absent.bin").as_uri(), dest, good)
    assert list(dest.parent.iterdir()) == []


# --- CIFAR-10 python batches and archives, with a toy data set of the same format -------------------------


def cifar_batch(x: np.ndarray, y: np.ndarray) -> bytes:
    """A python batch like CIFAR-10's (the numpy module name as numpy 1 pickled it)."""
    raw = pickle.dumps({b"batch_label": b"toy", b"labels": y.tolist(), b"data": x.reshape(len(x), -1)}, protocol=2)
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


@pytest.fixture
def toy_cifar(isolated: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator) -> dict[str, Any]:
    """A registered data set 'toy' in CIFAR-10's formats, with its tarball and checksums."""
    x = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, size=6)
    batch = cifar_batch(x, y)
    tarball = isolated / "served" / "toy.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(batch)
        tar.addfile(info, io.BytesIO(batch))
    archive = registry.DataFile("toy.tar.gz", (f"md5:{hashlib.md5(tarball.read_bytes()).hexdigest()}",),
                                url="https://example.org/toy.tar.gz")
    entry = registry.DataFile("cifar-10-batches-py/test_batch", (f"md5:{hashlib.md5(batch).hexdigest()}",),
                              archive=archive)
    meta = registry.DatasetInfo("toy", "Toy", (3, 32, 32), tuple("abcdefghij"), (0.5,) * 3, (0.25,) * 3,
                                sources={"test": (registry.Source("cifar-python", (entry,)),)})
    monkeypatch.setitem(registry.REGISTRY, "toy", meta)
    return {"x": x, "y": y, "tarball": tarball, "batch": batch, "url": archive.url}


def test_cifar_download_extracts_verified_batches(toy_cifar: dict[str, Any], isolated: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, {toy_cifar["url"]: toy_cifar["tarball"]})
    x, y = datasets.load("toy")
    np.testing.assert_array_equal(np.rint(x * 255), toy_cifar["x"])
    np.testing.assert_array_equal(y, toy_cifar["y"])
    cached = datasets.cache_dir() / "toy"
    assert [p.name for p in cached.iterdir()] == ["cifar-10-batches-py"]  # tarball removed after extraction
    assert (cached / "cifar-10-batches-py" / "test_batch").read_bytes() == toy_cifar["batch"]


def test_cifar_batch_read_from_a_local_tarball(toy_cifar: dict[str, Any], isolated: Path) -> None:
    root = isolated / "root" / "toy"
    root.mkdir(parents=True)
    shutil.copy(toy_cifar["tarball"], root / "toy.tar.gz")
    data = datasets.load("toy", root=isolated / "root", download=False)
    assert data.source_files == (f"{root / 'toy.tar.gz'}:cifar-10-batches-py/test_batch",)
    np.testing.assert_array_equal(data.y, toy_cifar["y"])
    assert list(root.iterdir()) == [root / "toy.tar.gz"]  # nothing extracted into the user's folder


def test_cifar_batch_that_fails_its_checksum(toy_cifar: dict[str, Any], isolated: Path) -> None:
    target = isolated / "root" / "toy" / "cifar-10-batches-py" / "test_batch"
    target.parent.mkdir(parents=True)
    target.write_bytes(cifar_batch(toy_cifar["x"][:2], toy_cifar["y"][:2]))
    with pytest.raises(DatasetError, match=f"{target} failed its checksum"):
        datasets.load("toy", root=isolated / "root", download=False)


def test_parse_batch_refuses_other_pickles(rng: np.random.Generator) -> None:
    x = rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
    got_x, got_y = parse_batch(cifar_batch(x, np.array([4, 2])), "batch")
    np.testing.assert_array_equal(got_x, x)
    assert got_y.tolist() == [4, 2]
    with pytest.raises(DatasetError, match="refusing to load posix.getcwd|refusing to load nt.getcwd"):
        parse_batch(pickle.dumps(_Evil(), protocol=2), "evil.pkl")
    with pytest.raises(DatasetError, match="not a CIFAR-10 python batch"):
        parse_batch(pickle.dumps({b"data": [1, 2]}, protocol=2), "odd.pkl")


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (os.getcwd, ())


def test_parse_eran_csv_transposes_hwc_to_chw(rng: np.random.Generator) -> None:
    hwc = rng.integers(0, 256, size=(2, 32, 32, 3))
    rows = np.concatenate([np.array([[3], [8]]), hwc.reshape(2, -1)], axis=1)
    text = "\n".join(",".join(str(v) for v in r) for r in rows).encode()
    x, y = parse_eran_csv(text, "t.csv")
    assert y.tolist() == [3, 8]
    np.testing.assert_array_equal(x[1, 2, 5, 7], hwc[1, 5, 7, 2])  # channel 2 (blue) of pixel (5, 7)
    with pytest.raises(DatasetError, match="t.csv: rows have 4 values"):
        parse_eran_csv(b"1,2,3,4\n", "t.csv")
    with pytest.raises(DatasetError, match="pixel values span"):
        parse_eran_csv(",".join(["1"] + ["300"] * 3072).encode(), "t.csv")


def test_parse_idx_rejects_bad_magic_and_truncation() -> None:
    labels = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    assert parse_idx(labels, "l", ndim=1).tolist() == [1, 2, 3]
    with pytest.raises(DatasetError, match="f.idx is not an IDX file.*magic number 2049, expected 2051"):
        parse_idx(labels, "f.idx", ndim=3)
    with pytest.raises(DatasetError, match="truncated"):
        parse_idx(labels[:-1], "f.idx", ndim=1)


# --- user data ------------------------------------------------------------------------------------------


def test_user_npz(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.integers(0, 256, size=(5, 1, 4, 4), dtype=np.uint8)
    y = rng.integers(0, 3, size=5)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    data = datasets.load(path, limit=4)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    np.testing.assert_allclose(data.x, x[:4] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y, y[:4])
    assert (data.n, data.total, data.verified, data.info) == (4, 5, False, None)
    assert data.source_files == (str(path),)


def test_user_npy_pair(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.uniform(-1.0, 2.0, size=(4, 6))
    np.save(tmp_path / "X_eran.npy", x)
    np.save(tmp_path / "y_eran.npy", np.array([0, 1, 1, 0]))
    data = datasets.load(str(tmp_path / "X_eran.npy"))
    np.testing.assert_array_equal(data.x, x.astype(np.float32))
    assert data.y.tolist() == [0, 1, 1, 0]
    assert data.source_files == (str(tmp_path / "X_eran.npy"), str(tmp_path / "y_eran.npy"))
    assert "not [0, 1]" in data.note
    np.save(tmp_path / "inputs.npy", x)
    with pytest.raises(DatasetError, match="holds only inputs; pass the labels file"):
        datasets.load_arrays(tmp_path / "inputs.npy")
    assert datasets.load_arrays(tmp_path / "inputs.npy", labels=tmp_path / "y_eran.npy").n == 4


@pytest.mark.parametrize("x, y, kwargs, message", [
    (np.zeros((3, 2)), np.array([0, 1, 5]), {"num_classes": 3}, r"1 labels are out of range \(first: 5 at index 2\)"),
    (np.zeros((3, 2)), np.array([0, -1, 1]), {}, "expected non-negative"),
    (np.zeros((3, 2)), np.array([0, 1]), {}, r"labels have shape \(2,\); expected \(3,\)"),
    (np.zeros((3, 2)), np.array([0.5, 1, 1]), {}, "not whole numbers"),
    (np.array([[0, np.nan], [0, 0], [np.inf, 0]]), np.array([0, 1, 1]), {}, "2 NaN or infinite"),
    (np.zeros((3, 2), dtype=np.int32), np.array([0, 1, 1]), {}, "inputs are int32"),
    (np.zeros(3), np.array([0, 1, 1]), {}, r"inputs have shape \(3,\)"),
])
def test_user_data_errors(tmp_path: Path, x: np.ndarray, y: np.ndarray, kwargs: dict[str, Any], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DatasetError, match=message):
        datasets.load_arrays(path, **kwargs)


def test_user_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such data file"):
        datasets.load(tmp_path / "absent.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DatasetError, match="has no array x or X"):
        datasets.load(tmp_path / "other.npz")
    np.save(tmp_path / "x_obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetError, match="pickled objects are not accepted"):
        datasets.load(tmp_path / "x_obj.npy")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DatasetError, match="unsupported data file type '.csv'"):
        datasets.load_arrays(tmp_path / "data.csv")
