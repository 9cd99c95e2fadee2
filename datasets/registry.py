"""The built-in data sets: their files as distributed, checksums, download sources and metadata.

Each split of a data set has one or more :class:`Source` s, tried in order: a source is a
file format plus the files it needs, named as the original distribution names them.  The
checksums are the ones published with (or computed from) the official files; see each
:class:`DataFile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lipcert.errors import DatasetError

Format = Literal["idx", "cifar-python", "eran-csv"]

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass(frozen=True)
class DataFile:
    """One file of a data set, as distributed.

    Parameters
    ----------
    path : str
        Path relative to the data set's folder ``<dir>/<name>/``, e.g.
        ``"t10k-images-idx3-ubyte.gz"`` or ``"cifar-10-batches-py/test_batch"``.
    digests : tuple of str
        Accepted checksums of the file's bytes, each ``"<algorithm>:<hex>"`` (any hashlib name).
    content_digests : tuple of str
        Accepted checksums of the decompressed bytes of a ``.gz`` file.  A file is accepted if
        either kind matches, so a recompressed copy (Debian's Fashion-MNIST) still verifies.
    url : str or None
        Where to download the file from; None if it comes from ``archive`` or has no download.
    archive : DataFile or None
        The archive (a .tar.gz) that holds this file under ``path``.
    aliases : tuple of str
        Other accepted file names, tried after ``path``.
    """

    path: str
    digests: tuple[str, ...]
    content_digests: tuple[str, ...] = ()
    url: str | None = None
    archive: DataFile | None = None
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """``path`` followed by its aliases."""
        return (self.path, *self.aliases)


@dataclass(frozen=True)
class Source:
    """One way to obtain a split: a file format and the files it reads.

    Parameters
    ----------
    format : {"idx", "cifar-python", "eran-csv"}
        IDX images + labels (gzip), CIFAR-10 python pickled batches, or the ERAN/VNN-COMP CSV
        (one row per input: label, then the pixels in H, W, C order).
    files : tuple of DataFile
        For ``"idx"``: images then labels; for ``"cifar-python"``: the batches in order.
    note : str
        Said in the loaded :class:`~lipcert.datasets.Dataset` when this source is used
        (e.g. that it holds only part of the split).
    """

    format: Format
    files: tuple[DataFile, ...]
    note: str = ""

    @property
    def downloadable(self) -> bool:
        """Whether every file has a URL, directly or through its archive."""
        return all(f.url is not None or (f.archive is not None and f.archive.url is not None)
                   for f in self.files)


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a built-in data set.

    Parameters
    ----------
    name : str
        The registry name (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``), also the folder
        name under every search directory.
    title : str
        Human-readable name.
    input_shape : tuple of int
        Shape of one input as loaded, (C, H, W).
    class_names : tuple of str
        Name of each label, indexed by label.
    mean, std : tuple of float
        Per-channel mean and standard deviation of the training images in [0, 1] (the usual
        normalization constants).  A given model may expect other constants; use the model's.
    sources : dict
        Split name -> the :class:`Source` s that provide it, in the order tried.
    homepage, license : str
        Where the data set is described, and its terms.
    """

    name: str
    title: str
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sources: dict[str, tuple[Source, ...]] = field(compare=False)
    homepage: str = ""
    license: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the available splits."""
        return tuple(self.sources)


def _gz(base: str, name: str, md5: str, content_md5: str | None = None) -> DataFile:
    """A .gz file downloadable from ``base + name`` with its md5 and optional content md5."""
    return DataFile(name, digests=(f"md5:{md5}",),
                    content_digests=(f"md5:{content_md5}",) if content_md5 else (), url=base + name)


def _idx(base: str, prefix: str, images: tuple[str, ...], labels: tuple[str, ...]) -> Source:
    """The IDX source ``<prefix>-images-idx3-ubyte.gz`` + ``<prefix>-labels-idx1-ubyte.gz``.

    ``images`` and ``labels`` are (md5 of the .gz file[, md5 of its decompressed content]).
    """
    return Source("idx", (_gz(base, f"{prefix}-images-idx3-ubyte.gz", *images),
                          _gz(base, f"{prefix}-labels-idx1-ubyte.gz", *labels)))


# MNIST: official .gz md5s (as used by torchvision and the ossci mirror); content md5s of the
# test files were computed here from the official files.
MNIST = DatasetInfo(
    name="mnist",
    title="MNIST",
    input_shape=(1, 28, 28),
    class_names=tuple(str(d) for d in range(10)),
    mean=(0.1307,),
    std=(0.3081,),
    sources={
        "test": (_idx(MNIST_URL, "t10k",
                      ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
                      ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637")),),
        "train": (_idx(MNIST_URL, "train",
                       ("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
                       ("d53e105ee54ea40749a09fcbcd1e9432",)),),
    },
    homepage="http://yann.lecun.com/exdb/mnist/",
    license="Y. LeCun, C. Cortes, C. Burges; commonly cited as CC BY-SA 3.0",
)

# Fashion-MNIST: official .gz md5s; the content md5s accept Debian's recompressed training files
# (package dataset-fashion-mnist) and were computed here from the official test files.
FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    title="Fashion-MNIST",
    input_shape=(1, 28, 28),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Ankle boot"),
    mean=(0.2860,),
    std=(0.3530,),
    sources={
        "test": (_idx(FASHION_URL, "t10k",
                      ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
                      ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965")),),
        "train": (_idx(FASHION_URL, "train",
                       ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
                       ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9")),),
    },
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    license="MIT (Zalando SE)",
)

_CIFAR_ARCHIVE = DataFile("cifar-10-python.tar.gz", digests=("md5:c58f30108f718f92721af3b95e74349a",),
                          url=CIFAR10_URL)


def _batch(name: str, md5: str) -> DataFile:
    """A python batch of the CIFAR-10 tarball, extracted under cifar-10-batches-py/."""
    return DataFile(f"cifar-10-batches-py/{name}", digests=(f"md5:{md5}",), archive=_CIFAR_ARCHIVE)


# CIFAR-10: the official tarball md5 and per-batch md5s of its extracted python batches (as used by
# torchvision); the ERAN CSV's sha256 is that of eth-sri/eran data/cifar10_test.csv.
CIFAR10 = DatasetInfo(
    name="cifar10",
    title="CIFAR-10",
    input_shape=(3, 32, 32),
    class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    sources={
        "test": (
            Source("cifar-python", (_batch("test_batch", "40351d587109b95175f43aff81a1287e"),)),
            Source("eran-csv", (DataFile(
                "cifar10_test.csv",
                digests=("sha256:4cef6cdf54a6b78c7cae5ac7d20dc1d6eda1c9d8a04c6b08b5ecba6029a6f043",),
                aliases=("cifar10_test_first100.csv",)),),
                note="only the first 100 CIFAR-10 test images (ERAN's cifar10_test.csv)"),
        ),
        "train": (Source("cifar-python", (
            _batch("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            _batch("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            _batch("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            _batch("data_batch_4", "634d18415352ddfa80567beed471001a"),
            _batch("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
        )),),
    },
    homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    license="A. Krizhevsky (2009); no explicit license",
)

REGISTRY: dict[str, DatasetInfo] = {d.name: d for d in (MNIST, FASHION_MNIST, CIFAR10)}


def names() -> tuple[str, ...]:
    """Names of the built-in data sets."""
    return tuple(REGISTRY)


def info(name: str) -> DatasetInfo:
    """Metadata of a built-in data set.

    Parameters
    ----------
    name : str
        A registry name; case, ``_`` for ``-`` and ``cifar-10`` are tolerated.

    Returns
    -------
    DatasetInfo

    Raises
    ------
    DatasetError
        If ``name`` is not a built-in data set; the message lists the known ones.
    """
    key = name.strip().lower().replace("_", "-")
    key = "cifar10" if key == "cifar-10" else key
    if key not in REGISTRY:
        raise DatasetError(f"unknown data set {name!r}; known data sets: {', '.join(REGISTRY)} "
                           "(or pass the path of your own .npz/.npy file)")
    return REGISTRY[key]


def classes(name: str) -> tuple[str, ...]:
    """Class names of a built-in data set, indexed by label."""
    return info(name).class_names
