"""The ``privacy`` config group: which mechanism protects what clients share, and its options.

One validated, JSON-ready :class:`PrivacySpec` travels to every client inside the
:class:`fedkd.setup.FederationSetup`; the server builds its accountant from the same spec.
Every option error is a :class:`fedkd.errors.ConfigError` naming ``privacy.<key>``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Any

from fedkd.errors import ConfigError

logger = logging.getLogger(__name__)

MECHANISMS: tuple[str, ...] = ("none", "logit_dp", "pate", "dpsgd")
LOGIT_DP_MODES: tuple[str, ...] = ("local", "central")

#: Options every mechanism accepts (the audit runs with or without a mechanism).
_COMMON: dict[str, Any] = {
    "audit": False,
    "audit_attacks": ["loss", "lira"],
    "audit_shadows": 8,
    "audit_clients": 3,
    "audit_epochs": None,
    "audit_canaries": 200,
}
_DP: dict[str, Any] = {
    "delta": 1e-5,
    "max_epsilon": None,
    "target_epsilon": None,
    "budget": "federation",
    "accountant": "best",
    "client_sampling": "fixed",
    "allow_unprotected": [],
    "reproducible_noise": False,
}
ACCOUNTANTS: tuple[str, ...] = ("best", "rdp", "pld")
BUDGETS: tuple[str, ...] = ("federation", "client")
CLIENT_SAMPLING: tuple[str, ...] = ("fixed", "poisson")

#: Allowed options and their defaults, per mechanism.
OPTIONS: dict[str, dict[str, Any]] = {
    "none": dict(_COMMON),
    "logit_dp": {**_COMMON, **_DP, "mode": "local", "clip": 1.0, "noise_multiplier": 1.0},
    "pate": {**_COMMON, **_DP, "sigma": 1.0, "threshold": None, "sigma_threshold": None},
    "dpsgd": {**_COMMON, **_DP, "noise_multiplier": 1.0, "max_grad_norm": 1.0},
}

_ANY_OPTION = {key for options in OPTIONS.values() for key in options}


def _number(key: str, value: Any, *, positive: bool = True, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(float(value)):
        raise ConfigError(f"privacy.{key} must be a finite number, got {value!r}")
    if positive and not float(value) > 0:
        raise ConfigError(f"privacy.{key} must be > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PrivacySpec:
    """A validated ``privacy`` group.

    Attributes
    ----------
    name : str
        ``none``, ``logit_dp`` (clipped Gaussian noise on shared proxy predictions),
        ``pate`` (noisy vote counts, GNMax / confident GNMax) or ``dpsgd`` (Opacus DP-SGD
        local training).
    mode : str
        ``logit_dp`` only: ``local`` (each client noises its own release) or ``central``
        (clients clip, the server noises the sum).
    clip : float
        ``logit_dp``: L2 bound of each proxy example's shared probability vector.
    noise_multiplier : float
        ``logit_dp``: noise std / L2 sensitivity; ``dpsgd``: Opacus's noise multiplier.
    sigma : float
        ``pate``: std of the Gaussian noise on the vote counts (GNMax).
    threshold, sigma_threshold : float, optional
        ``pate``: confident GNMax; answer a query only when the top vote count plus
        ``N(0, sigma_threshold^2)`` reaches ``threshold``. ``None``: plain GNMax.
    max_grad_norm : float
        ``dpsgd``: per-example gradient clipping bound.
    delta : float
        Target delta of the reported (epsilon, delta).
    max_epsilon : float, optional
        Budget on the record-level epsilon: the run stops before a round that would exceed
        it (``budget=federation``), or a client that would exceed it stops taking part
        (``budget=client``).
    target_epsilon : float, optional
        Calibrate the noise (``noise_multiplier`` or ``sigma``) before the run so the
        record-level epsilon after every planned round is this value
        (:mod:`fedkd.privacy.calibration`).
    budget : str
        ``federation`` or ``client`` (see ``max_epsilon``).
    accountant : str
        ``best`` (the tighter of RDP and PLD, named), ``rdp`` or ``pld`` for the final
        guarantees; rounds and budgets always use RDP (an upper bound).
    client_sampling : str
        ``fixed`` (``strategy.fraction_train`` of the clients each round; not credited) or
        ``poisson`` (each client independently with probability ``fraction_train``;
        amplification credited to the server-side mechanisms).
    allow_unprotected : tuple of str
        Wire keys a client may send in the clear under the mechanism (``train-loss``,
        ``test-probs``, ...); every other unprotected key is withheld.
    reproducible_noise : bool
        Derive the noise from the run seed (research reruns); unsafe for real deployments.
    audit, audit_attacks, audit_shadows, audit_clients, audit_epochs, audit_canaries
        Audits after the run: membership inference (:mod:`fedkd.privacy.audit`) and the
        one-run canary audit of what was released (:mod:`fedkd.privacy.canary`).
    """

    name: str = "none"
    mode: str = "local"
    clip: float = 1.0
    noise_multiplier: float = 1.0
    sigma: float = 1.0
    threshold: float | None = None
    sigma_threshold: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    max_epsilon: float | None = None
    target_epsilon: float | None = None
    budget: str = "federation"
    accountant: str = "best"
    client_sampling: str = "fixed"
    allow_unprotected: tuple[str, ...] = ()
    reproducible_noise: bool = False
    audit: bool = False
    audit_attacks: tuple[str, ...] = ("loss", "lira")
    audit_shadows: int = 8
    audit_clients: int = 3
    audit_epochs: int | None = None
    audit_canaries: int = 200

    @property
    def enabled(self) -> bool:
        """A mechanism is on (anything but ``none``)."""
        return self.name != "none"

    @property
    def confident(self) -> bool:
        """PATE with the confident-GNMax threshold check."""
        return self.name == "pate" and self.threshold is not None

    @property
    def unit(self) -> str:
        """What ``epsilon`` (the headline, record-level) protects, in words."""
        if self.name == "dpsgd":
            return "record: one training record of one client, added or removed"
        if self.name in ("logit_dp", "pate"):
            return (
                "record: one training record of one client, added, removed or changed "
                "(client-level guarantee: epsilon_client)"
            )
        return "none"

    def sends_unprotected(self, key: str) -> bool:
        """Clients send ``key``, which no mechanism protects: always without a mechanism,
        under one only when ``privacy.allow_unprotected`` names it."""
        return not self.enabled or key in self.allow_unprotected

    @property
    def server_side(self) -> bool:
        """The server adds the noise (central ``logit_dp``, ``pate``): the guarantee assumes
        an honest server."""
        return self.name == "pate" or (self.name == "logit_dp" and self.mode == "central")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["audit_attacks"] = list(self.audit_attacks)
        data["allow_unprotected"] = list(self.allow_unprotected)
        return data

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> PrivacySpec:
        """Rebuild from :meth:`to_dict` (what clients receive); ``None`` is off."""
        if not data:
            return PrivacySpec()
        return PrivacySpec(
            **{
                **data,
                "audit_attacks": tuple(data.get("audit_attacks", ())),
                "allow_unprotected": tuple(data.get("allow_unprotected", ())),
            }
        )

    @staticmethod
    def from_config(cfg: dict[str, Any] | None) -> PrivacySpec:
        """Validate the ``privacy`` group (``None`` or ``{name: none}`` is off)."""
        cfg = dict(cfg or {"name": "none"})
        name = cfg.pop("name", "none")
        if name not in MECHANISMS:
            raise ConfigError(f"privacy.name must be one of {list(MECHANISMS)}, got {name!r}")
        allowed = OPTIONS[name]
        cfg = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
        # Options of another mechanism (left by a preset when the group is switched, e.g.
        # experiment=healthcare privacy=none) are ignored with a warning; typos fail.
        other = sorted(str(k) for k in cfg if k not in allowed and k in _ANY_OPTION)
        if other:
            logger.warning(
                "privacy=%s ignores %s (options of another mechanism)",
                name,
                ["privacy." + k for k in other],
            )
            cfg = {k: v for k, v in cfg.items() if k in allowed}
        unknown = sorted(str(k) for k in cfg if k not in allowed)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {['privacy.' + k for k in unknown]} for privacy={name}; "
                f"allowed: {sorted(allowed)}"
            )
        values = {**allowed, **cfg}
        kwargs: dict[str, Any] = {"name": name}
        if name != "none":
            delta = _number("delta", values["delta"])
            assert delta is not None
            if not delta < 1:
                raise ConfigError(f"privacy.delta must be in (0, 1), got {delta!r}")
            kwargs["delta"] = delta
            kwargs["max_epsilon"] = _number("max_epsilon", values["max_epsilon"], optional=True)
            if not isinstance(values["reproducible_noise"], bool):
                raise ConfigError(
                    "privacy.reproducible_noise must be true or false, "
                    f"got {values['reproducible_noise']!r}"
                )
            kwargs["reproducible_noise"] = values["reproducible_noise"]
            kwargs.update(_budget_options(values))
        if name == "logit_dp":
            if values["mode"] not in LOGIT_DP_MODES:
                raise ConfigError(
                    f"privacy.mode must be one of {list(LOGIT_DP_MODES)}, got {values['mode']!r}"
                )
            kwargs["mode"] = values["mode"]
            kwargs["clip"] = _number("clip", values["clip"])
            kwargs["noise_multiplier"] = _number("noise_multiplier", values["noise_multiplier"])
        elif name == "pate":
            kwargs["sigma"] = _number("sigma", values["sigma"])
            threshold = _number("threshold", values["threshold"], optional=True)
            sigma_threshold = _number("sigma_threshold", values["sigma_threshold"], optional=True)
            if (threshold is None) != (sigma_threshold is None):
                raise ConfigError(
                    "privacy.threshold and privacy.sigma_threshold go together (confident "
                    "GNMax); set both, or neither for plain GNMax"
                )
            kwargs["threshold"], kwargs["sigma_threshold"] = threshold, sigma_threshold
        elif name == "dpsgd":
            kwargs["noise_multiplier"] = _number("noise_multiplier", values["noise_multiplier"])
            kwargs["max_grad_norm"] = _number("max_grad_norm", values["max_grad_norm"])
        kwargs.update(_audit_options(values))
        return PrivacySpec(**kwargs)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"privacy.{key} must be one of {list(choices)}, got {value!r}")
    return str(value)


def _budget_options(values: dict[str, Any]) -> dict[str, Any]:
    target = _number("target_epsilon", values["target_epsilon"], optional=True)
    budget = _number("max_epsilon", values["max_epsilon"], optional=True)
    if target is not None and budget is not None and target > budget:
        raise ConfigError(
            f"privacy.target_epsilon={target:g} exceeds privacy.max_epsilon={budget:g}"
        )
    allowed = values["allow_unprotected"]
    if isinstance(allowed, str):
        allowed = [allowed]
    if not isinstance(allowed, list | tuple) or not all(isinstance(k, str) for k in allowed):
        raise ConfigError(f"privacy.allow_unprotected must be a list of wire keys, got {allowed!r}")
    # Whether each key exists is checked against the payload layer in prepare_run
    # (fedkd.wire.ledger.check_allowed).
    return {
        "target_epsilon": target,
        "budget": _choice("budget", values["budget"], BUDGETS),
        "accountant": _choice("accountant", values["accountant"], ACCOUNTANTS),
        "client_sampling": _choice("client_sampling", values["client_sampling"], CLIENT_SAMPLING),
        "allow_unprotected": tuple(dict.fromkeys(allowed)),
    }


def _audit_options(values: dict[str, Any]) -> dict[str, Any]:
    from fedkd.privacy.audit import ATTACKS

    if not isinstance(values["audit"], bool):
        raise ConfigError(f"privacy.audit must be true or false, got {values['audit']!r}")
    attacks = values["audit_attacks"]
    if isinstance(attacks, str):
        attacks = [attacks]
    if not attacks or any(a not in ATTACKS for a in attacks):
        raise ConfigError(
            f"privacy.audit_attacks must be a non-empty list of {list(ATTACKS)}, got {attacks!r}"
        )
    for key, minimum in (("audit_shadows", 2), ("audit_clients", 0), ("audit_canaries", 0)):
        value = values[key]
        if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"privacy.{key} must be an integer >= {minimum}, got {value!r}")
    epochs = values["audit_epochs"]
    if epochs is not None and (not isinstance(epochs, Integral) or epochs < 1):
        raise ConfigError(f"privacy.audit_epochs must be an integer >= 1 or null, got {epochs!r}")
    return {
        "audit": values["audit"],
        "audit_attacks": tuple(str(a) for a in attacks),
        "audit_shadows": int(values["audit_shadows"]),
        "audit_clients": int(values["audit_clients"]),
        "audit_epochs": None if epochs is None else int(epochs),
        "audit_canaries": int(values["audit_canaries"]),
    }


def public_examples(spec: PrivacySpec, num_examples: int, batch_size: int) -> int:
    """The training example count a client reports under ``spec``.

    Without a mechanism: the exact count. Under ``dpsgd``: ``batch_size * ceil(n /
    batch_size)``, the dataset size implied by the sampling rate ``1 / ceil(n /
    batch_size)`` that DP-SGD's accounting treats as public (as Opacus does). Under
    ``logit_dp`` and ``pate``: 1 for every client (the release never depends on counts, so
    every client weighs the same and nothing about its size leaves it).
    """
    if not spec.enabled:
        return int(num_examples)
    if spec.name == "dpsgd":
        return int(batch_size * math.ceil(num_examples / batch_size))
    return 1
