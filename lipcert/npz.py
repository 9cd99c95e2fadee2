"""Networks as .npz files of weight matrices (the format of ``lipcert bound WEIGHTS.npz``).

Arrays ``W1`` ... ``WL`` (each (out, in)), optional biases ``b1`` ... ``bL``, optional
``activation`` (one name, or L-1 names), optional ``input_shape``, and ``mask1`` ... for the hidden
layers whose activation acts on some neurons only (``abs_or_identity``: True where |z|, False
where the identity).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from .activations import Activation, abs_or_identity
from .errors import ModelLoadError
from .network import Network, require_network


def save_npz(net: Network, path: str | Path) -> None:
    """Write ``net`` in the .npz format (activations by name); operator layers must be densified first."""
    net = require_network(net, "save_npz")
    arrays: dict[str, np.ndarray] = {}
    for k, (w, b) in enumerate(zip(net.weights, net.biases), start=1):
        arrays[f"W{k}"] = w.numpy()
        arrays[f"b{k}"] = b.numpy()
    arrays["activation"] = np.array(net.activation_names or ["relu"])
    for k, act in enumerate(net.activations, start=1):
        if act.mask is not None:
            arrays[f"mask{k}"] = np.array(act.mask, dtype=bool)
    arrays["input_shape"] = np.array(net.input_shape)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # mypy lets **arrays fill savez's allow_pickle: bool


def load_npz(path: str | Path) -> Network:
    """Read a network from the .npz format; errors name the missing or malformed array."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ModelLoadError(f"no such file: {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{path} is not a readable .npz file: {exc}") from exc
    with data:
        names = [n for n in data.files if re.fullmatch(r"W\d+", n)]
        if not names:
            raise ModelLoadError(f"{path} holds no weight arrays; expected W1, W2, ... (found: "
                                 f"{', '.join(data.files) or 'nothing'})")
        count = max(int(n[1:]) for n in names)
        missing = [f"W{k}" for k in range(1, count + 1) if f"W{k}" not in data.files]
        if missing:
            raise ModelLoadError(f"{path}: weight arrays {', '.join(missing)} are missing")
        weights = [data[f"W{k}"] for k in range(1, count + 1)]
        biases = [data[f"b{k}"] if f"b{k}" in data.files else None for k in range(1, count + 1)]
        act: str | list[str] = "relu"
        if "activation" in data.files:
            a = data["activation"]
            act = str(a) if a.ndim == 0 else ([str(s) for s in a] if len(a) > 1 or count == 2 else str(a[0]))
        shape = tuple(int(s) for s in data["input_shape"]) if "input_shape" in data.files else None
        masks = {k: data[f"mask{k}"] for k in range(1, count) if f"mask{k}" in data.files}
    if not masks:
        return Network.from_weights(weights, biases, act, input_shape=shape, info={"source": str(path)})
    names = [act] * (count - 1) if isinstance(act, str) else list(act)
    acts: list[str | Activation] = [abs_or_identity(masks[k + 1].astype(bool).tolist()) if k + 1 in masks else name
                                    for k, name in enumerate(names)]
    return Network.from_weights(weights, biases, acts, input_shape=shape, info={"source": str(path)})
