"""lipcert: certified robustness of neural networks from Lipschitz bounds.

Every verb takes the model first (a :class:`Network`, a model file or a torch module, loaded once
by :func:`load`; models with residual blocks are a :class:`GraphNetwork`), then inputs and labels, then keyword-only options (``norm``, ``eps``, ``method``);
every certification result answers :class:`Certificates` (``radius``, ``certified(eps)``,
``certified_accuracy(eps)``, ``seconds``).

>>> import lipcert
>>> net = lipcert.Network.from_weights([[[1.0, 2.0]], ], activation="relu")
>>> round(lipcert.lipschitz(net).value, 6)
2.236068
"""

from . import errors
from .attacks import AttackResult, attack
from .bounds import CertificateCheck, LipschitzBound, LowerBound, check_certificate
from .certification import Certification, certify
from .combination import BatchCertificates, Combination, certify_batch, combine
from .errors import LipcertError
from .graph import GraphNetwork, Residual, graph_network
from .loading import load
from .network import Network
from .results import Certificates
from .verbs import lipschitz, lower_bound
from .vnncomp import VnnResult, vnnlib_check

__version__ = "0.1.0"

__all__ = ["AttackResult", "BatchCertificates", "CertificateCheck", "Certificates", "Certification", "Combination",
           "GraphNetwork", "LipcertError", "LipschitzBound", "LowerBound", "Network", "Residual", "VnnResult",
           "__version__", "attack", "certify", "certify_batch", "check_certificate", "combine", "errors",
           "graph_network", "lipschitz", "load", "lower_bound", "vnnlib_check"]
