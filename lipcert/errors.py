"""Named errors raised by lipcert.

Every error subclasses :class:`LipcertError` and a builtin exception, so callers can catch
either ``lipcert.errors.LipcertError`` or the builtin they already handle.
"""

from __future__ import annotations


class LipcertError(Exception):
    """Base class of every error raised on purpose by lipcert."""


class NonFiniteWeightsError(LipcertError, ValueError):
    """A weight matrix or bias holds NaN or infinity."""


class ShapeMismatchError(LipcertError, ValueError):
    """Consecutive layers, inputs or labels do not fit together."""


class UnknownActivationError(LipcertError, ValueError):
    """An activation name that lipcert has no slope bounds for."""


class InvalidSlopeError(LipcertError, ValueError):
    """Slope bounds with alpha > beta or non-finite values."""


class UnknownMethodError(LipcertError, ValueError):
    """A bound method name that lipcert does not implement."""


class InvalidOptionError(LipcertError, ValueError):
    """Options of a bound method that are not a mapping, or name an option the method does not take."""


class UnsupportedOperatorError(LipcertError, NotImplementedError):
    """A model operator outside the chain of affine maps and elementwise activations."""


class InfeasibleCertificateError(LipcertError, RuntimeError):
    """No positive definite certificate could be built (a Cholesky factorization failed)."""


class ProblemTooLargeError(LipcertError, ValueError):
    """An SDP whose PSD size is over the solver's limit (time and memory guard)."""


class MissingExtraError(LipcertError, ImportError):
    """An optional dependency is not installed; the message names the install line."""


class ModelLoadError(LipcertError, ValueError):
    """A model file is missing, corrupt, or its conversion does not match the original."""


class DatasetError(LipcertError, ValueError):
    """An unknown data set, or a missing or corrupt data file."""


class VnnlibError(LipcertError, ValueError):
    """A VNN-LIB property file that is malformed or uses a form lipcert does not support."""


def require_extra(module: str, extra: str, install: str | None = None) -> None:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        line = install or f"pip install 'lipcert[{extra}]'"
        raise MissingExtraError(
            f"{module} is needed here but is not installed; install the '{extra}' extra: {line}"
        ) from exc
