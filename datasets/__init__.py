"""Data sets for certification: MNIST, Fashion-MNIST, CIFAR-10 and a user's own arrays.

>>> from lipcert import datasets
>>> datasets.names()
('mnist', 'fashion-mnist', 'cifar10')
>>> datasets.info("cifar10").input_shape
(3, 32, 32)

``x, y = datasets.load("mnist", limit=100)`` reads the original distribution files, verified by
checksum, from ``root``, ``$LIPCERT_DATA``, the user cache or ``/usr/share/datasets`` (see
:func:`load` and :func:`search_dirs`), downloading what is missing.
"""

from .dataset import Dataset
from .loader import load
from .locate import cache_dir, search_dirs
from .registry import DataFile, DatasetInfo, Source, classes, info, names
from .user import load_arrays

__all__ = ["DataFile", "Dataset", "DatasetInfo", "Source", "cache_dir", "classes", "info", "load", "load_arrays",
           "names", "search_dirs"]
