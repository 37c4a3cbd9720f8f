"""Privacy: mechanisms on shared predictions, DP-SGD clients, accounting and an audit.

* :mod:`fedkd.privacy.config`: the ``privacy`` config group (:class:`PrivacySpec`).
* :mod:`fedkd.privacy.mechanisms`: clipping, Gaussian noise, PATE votes, noise generators.
* :mod:`fedkd.privacy.accounting`: (epsilon, delta) with dp-accounting's RDP accountant.
* :mod:`fedkd.privacy.controller`: the server side of a private run (budget, release).
* :mod:`fedkd.privacy.dpsgd`: Opacus DP-SGD with an accountant that persists across rounds.
* :mod:`fedkd.privacy.audit`: membership-inference attacks (loss threshold, LiRA).

Opacus and dp-accounting are imported only by the modules that need them.
"""

from fedkd.privacy.config import MECHANISMS, PrivacySpec
from fedkd.privacy.controller import PrivacyBudgetExhausted, PrivacyController

__all__ = ["MECHANISMS", "PrivacyBudgetExhausted", "PrivacyController", "PrivacySpec"]
