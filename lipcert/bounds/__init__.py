"""Upper and lower bounds on the L2 Lipschitz constant of a :class:`~lipcert.Network`."""

from .certificate import CertificateCheck, check_certificate
from .methods import METHODS, lipschitz
from .lower import LowerBound, lower_bound
from .result import LipschitzBound
from .rules import DEFAULT_RULE_SET, Rule

__all__ = ["METHODS", "CertificateCheck", "DEFAULT_RULE_SET", "LipschitzBound", "LowerBound", "Rule",
           "check_certificate", "lipschitz", "lower_bound"]
