"""lipcert: certified robustness of neural networks from Lipschitz bounds.

>>> import lipcert
>>> net = lipcert.Network.from_weights([[[1.0, 2.0]], ], activation="relu")
>>> round(lipcert.lipschitz(net).value, 6)
2.236068
"""

from . import errors, random_nets
from .activations import Activation, get_activation
from .attacks import AttackResult, attack
from .bounds import (METHODS, CertificateCheck, LipschitzBound, LowerBound, Rule, check_certificate,
                     lipschitz, lower_bound)
from .certification import Certification, certify
from .combination import BatchCertificates, Combination, certify_batch, combine
from .loading import load
from .network import Network
from .vnncomp import VnnResult, vnnlib_check

__version__ = "0.1.0"

__all__ = ["METHODS", "Activation", "AttackResult", "BatchCertificates", "CertificateCheck", "Certification",
           "Combination", "LipschitzBound", "LowerBound", "Network", "Rule", "__version__", "attack", "certify",
           "certify_batch", "check_certificate", "combine", "errors", "get_activation", "lipschitz", "load",
           "lower_bound", "VnnResult", "vnnlib_check"]
