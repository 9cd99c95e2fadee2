"""Named errors raised by lipcert.

Every error subclasses :class:`LipcertError` and a builtin exception, so callers can catch
either ``lipcert.errors.LipcertError`` or the builtin they already handle.
"""

from __future__ import annotations


class LipcertError(Exception):
    """Base class of every error raised on purpose by lipcert."""


class InvalidWeightsError(LipcertError, ValueError):
    """A weight matrix or bias that is not an array of real numbers (complex, text, objects)."""


class NonFiniteWeightsError(InvalidWeightsError):
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


class InvalidArgumentError(LipcertError, ValueError):
    """An argument outside its valid range (a batch size below 1, a negative tolerance, ...)."""


class InvalidRadiusError(InvalidArgumentError):
    """An eps (radius) that is negative, NaN or infinite."""


class InvalidNormError(LipcertError, ValueError):
    """A norm other than 2 and infinity."""


class InvalidParameterError(LipcertError, ValueError):
    """A method parameter or option outside its valid range (a rule's c, an optimizer option, ...)."""


class ResumeError(LipcertError, ValueError):
    """A records file that belongs to another run, or one that exists when resume was not asked for."""


class ReportError(LipcertError, ValueError):
    """A run folder without a readable report, or a report that does not follow the schema."""


class DemoDataError(LipcertError, RuntimeError):
    """A bundled demo file is missing or does not match the model card (a broken install)."""


class BoundMismatchError(LipcertError, ValueError):
    """A Lipschitz bound computed for another network than the one being certified."""


class UnknownVerifierError(LipcertError, ValueError):
    """A verifier name other than ibp, crown and alpha-crown."""


class NotANetworkError(LipcertError, TypeError):
    """A model where a loaded :class:`~lipcert.Network` is needed (load it with ``lipcert.load`` first)."""


class EpsNotInGridError(InvalidArgumentError):
    """An eps at which a verifier was not run (a result of a verifier knows only the eps of its grid)."""


class RunFolderError(LipcertError, ValueError):
    """An output folder that is a file, cannot be written, or holds files lipcert would overwrite."""


class RunLockedError(LipcertError, RuntimeError):
    """A run folder (records file) that another lipcert process is writing."""


class InputRangeWarning(UserWarning):
    """Inputs outside the range the model declares (e.g. pixels in 0..255 for a model of [0, 1] inputs)."""


class DenseTooLargeError(LipcertError, MemoryError):
    """A dense matrix of an operator layer (a convolution) would exceed the memory limit."""


class OperatorLayersError(LipcertError, TypeError):
    """A function that needs dense weight matrices got a network with operator layers (convolutions)."""


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


class CheckpointMismatchError(ModelLoadError):
    """State-dict weights that do not fit the model class (missing, unexpected or misshapen keys)."""


class ConfigError(LipcertError, ValueError):
    """A verifier config (alpha-beta-CROWN YAML) that is unreadable or holds fields lipcert cannot map."""


class UnsupportedSlopesError(LipcertError, ValueError):
    """Per-neuron slopes that a bound method cannot certify soundly (e.g. |.| neurons mixed with others)."""


class MemoryBudgetError(LipcertError, MemoryError):
    """A computation whose estimated working memory is over the limit (CLI ``--max-dense-gb``)."""


class ClusterError(LipcertError, RuntimeError):
    """A Dask cluster that cannot be reached or started, or that lost a task on every worker it tried."""


class UnsupportedConvGeometryError(LipcertError, ValueError):
    """An operator layer whose geometry a matrix-free method does not handle (e.g. zero padding or stride)."""


class GraphNetworkError(LipcertError, TypeError):
    """A network graph (residual blocks) given to a function that handles chains only."""
