"""lipcert: certified robustness of neural networks from Lipschitz bounds.

>>> import lipcert
>>> net = lipcert.Network.from_weights([[[1.0, 2.0]], ], activation="relu")
>>> round(lipcert.lipschitz(net).value, 6)
2.236068
"""

from . import errors
from .activations import Activation, get_activation
from .bounds import (METHODS, CertificateCheck, LipschitzBound, LowerBound, Rule, check_certificate,
                     lipschitz, lower_bound)
from .network import Network

__version__ = "0.1.0"

__all__ = ["METHODS", "Activation", "CertificateCheck", "LipschitzBound", "LowerBound", "Network", "Rule",
           "__version__", "check_certificate", "errors", "get_activation", "lipschitz", "lower_bound"]
