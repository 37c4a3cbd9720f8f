"""Secure aggregation on the wire: the ``secagg`` block and what a client sums.

Under ``secagg.enabled=true`` the summable payloads (proxy predictions, per-label logits,
prototypes, PATE votes, test-set predictions) never cross in the clear: each client turns
its values into one flat vector of *summands* (:class:`SumRule` says how: which teacher
space, equal or size weights, a share of distributed noise), masks it with the SecAgg+
protocol of :mod:`fedkd.privacy.secagg`, and the server unmasks only the sum over the
surviving clients. :mod:`fedkd.wire.payloads.secure_sum` packs and unpacks that vector;
``fedkd.apps.secure_client`` and ``strategies.core.secure_rounds`` run the protocol's
messages. This module holds the values both sides agree on and nothing that imports a
payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from fedkd.errors import ConfigError
from fedkd.privacy.secagg import FixedPointEncoding

#: Where a summed row lives: the raw values (a privacy mechanism's clipped rows or votes),
#: or one of the teacher spaces of :mod:`fedkd.distill.spaces`.
SUM_SPACES = ("identity", "probs", "logits", "tempered_probs")
NOISE_MODES = ("server", "distributed")
#: The fewest fractional bits accepted when the modulus forces fewer than asked for.
MIN_FRAC_BITS = 8


def _integer(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"secagg.{key} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class SecAggSpec:
    """The ``secagg`` block.

    Attributes
    ----------
    enabled : bool
        Clients mask their summable payloads; the server learns only their sum.
    max_dropouts : int or None
        Sampled clients that may drop out after sharing their keys with the sum still
        recovered; ``None``: a third of the round's sampled clients, rounded down. More
        dropouts than this stop the round (no sum is released).
    degree : int or None
        Neighbours per client in the SecAgg+ graph; ``None``: the fewest that tolerate
        ``max_dropouts`` (the complete graph of the original protocol when that is all).
    frac_bits : int
        Fixed-point fractional bits: each value is rounded to a multiple of
        ``2**-frac_bits``; lowered (never below 8) when the sum would not fit the modulus.
    noise : str
        Central ``logit_dp``: ``server`` adds the noise to the unmasked sum; ``distributed``
        has every client add a share of it before masking (see docs/PRIVACY.md).
    """

    enabled: bool = False
    max_dropouts: int | None = None
    degree: int | None = None
    frac_bits: int = 24
    noise: str = "server"

    @staticmethod
    def from_config(block: Mapping[str, Any] | None) -> SecAggSpec:
        """Parse and check the ``secagg`` block (``None``: off)."""
        if block is None:
            return SecAggSpec()
        if not isinstance(block, Mapping):
            raise ConfigError(f"secagg must be a mapping, got {block!r}")
        allowed = set(SecAggSpec.__dataclass_fields__)
        unknown = sorted(set(block) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown option(s) {['secagg.' + k for k in unknown]}; allowed: "
                f"{sorted('secagg.' + k for k in allowed)}"
            )
        enabled = block.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"secagg.enabled must be true or false, got {enabled!r}")
        max_dropouts = block.get("max_dropouts")
        if max_dropouts is not None:
            _integer(max_dropouts, "max_dropouts", 0)
        degree = block.get("degree")
        if degree is not None:
            _integer(degree, "degree", 1)
        frac_bits = _integer(block.get("frac_bits", 24), "frac_bits", MIN_FRAC_BITS)
        if frac_bits > 52:
            raise ConfigError(f"secagg.frac_bits must be <= 52, got {frac_bits}")
        noise = block.get("noise", "server")
        if noise not in NOISE_MODES:
            raise ConfigError(f"secagg.noise must be one of {NOISE_MODES}, got {noise!r}")
        return SecAggSpec(enabled, max_dropouts, degree, frac_bits, noise)

    def dropouts_for(self, sampled: int) -> int:
        """The dropouts a round of ``sampled`` clients tolerates."""
        return sampled // 3 if self.max_dropouts is None else self.max_dropouts

    def degree_for(self, sampled: int) -> int:
        """The graph degree for ``sampled`` clients (``sampled - 1``: complete).

        Raises
        ------
        ConfigError
            ``max_dropouts`` exceeds what any graph on ``sampled`` clients tolerates, or
            ``degree`` tolerates fewer dropouts than ``max_dropouts``.
        """
        dropouts = self.dropouts_for(sampled)
        complete = sampled - 1
        if tolerated(complete, sampled) < dropouts:
            raise ConfigError(
                f"secagg.max_dropouts={dropouts} exceeds what {sampled} sampled clients can "
                f"tolerate ({tolerated(complete, sampled)}: a strict majority of each client's "
                "share holders must remain); lower it or sample more clients"
            )
        if self.degree is not None:
            if tolerated(self.degree, sampled) < dropouts:
                raise ConfigError(
                    f"secagg.degree={self.degree} tolerates {tolerated(self.degree, sampled)} "
                    f"dropouts per neighbourhood, fewer than secagg.max_dropouts={dropouts}"
                )
            return min(self.degree, complete)
        return min(max(2, 2 * dropouts), complete)


def tolerated(degree: int, clients: int) -> int:
    """Holders of one client's secrets that may drop out in the graph of ``degree`` on
    ``clients`` clients (:mod:`fedkd.privacy.secagg.graph`: degree rounded up to even,
    complete when that reaches ``clients - 1``; threshold a strict majority)."""
    even = 2 * -(-degree // 2)
    actual = clients - 1 if even >= clients - 1 else even
    holders = actual + 1
    return holders - (holders // 2 + 1)


@dataclass(frozen=True)
class SumRule:
    """How a client turns its values into summands, and how the server reads the sum.

    Attributes
    ----------
    space : str
        Where proxy and test rows are summed (:data:`SUM_SPACES`): ``identity`` under a
        privacy mechanism (clipped rows, noisy rows or votes, released by the mechanism),
        else the method's teacher space.
    temperature, floor : float
        ``tempered_probs``'s temperature; probabilities below ``floor`` read as it before a
        log (as :func:`fedkd.distill.spaces.space_targets`).
    size_weighted : bool
        Rows are weighted by the client's example count (``aggregation=size_weighted``).
    noise_std : float
        Distributed noise: the std of the Gaussian share each client adds to its proxy
        rows (0: none).
    """

    space: str = "probs"
    temperature: float = 1.0
    floor: float = float(np.finfo(np.float32).tiny)
    size_weighted: bool = False
    noise_std: float = 0.0

    def to_config(self) -> dict[str, Any]:
        """As ConfigRecord values (sent with the round's secure-aggregation parameters)."""
        return {f"rule-{k.replace('_', '-')}": v for k, v in asdict(self).items()}

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> SumRule:
        values = {k: config[f"rule-{k.replace('_', '-')}"] for k in SumRule.__dataclass_fields__}
        rule = SumRule(
            space=str(values["space"]),
            temperature=float(values["temperature"]),
            floor=float(values["floor"]),
            size_weighted=bool(values["size_weighted"]),
            noise_std=float(values["noise_std"]),
        )
        if rule.space not in SUM_SPACES:
            raise ValueError(f"unknown secure-aggregation space {rule.space!r}")
        return rule

    def evaluation(self) -> SumRule:
        """The rule of evaluation-only outputs (test-set predictions): the teacher space
        (``probs`` under a mechanism, which does not cover them), never noise."""
        space = "probs" if self.space == "identity" else self.space
        return replace(self, space=space, noise_std=0.0)

    def to_space(self, rows: np.ndarray) -> np.ndarray:
        """Probability rows as the summed quantity (float64)."""
        rows = np.asarray(rows, dtype=np.float64)
        if self.space in ("identity", "probs"):
            return rows
        logs = np.log(np.maximum(rows, self.floor))
        if self.space == "logits":
            return logs
        logs = logs / self.temperature
        logs -= logs.max(axis=-1, keepdims=True)
        tempered = np.exp(logs)
        return tempered / tempered.sum(axis=-1, keepdims=True)

    def from_space(self, mean: np.ndarray) -> np.ndarray:
        """Rows ``q`` whose :meth:`to_space` is ``mean`` (the mean of the summands): what a
        single client sending ``q`` would have contributed, so a mean teacher rule over it
        returns the teacher of the whole sum. ``identity``: ``mean`` itself."""
        mean = np.asarray(mean, dtype=np.float64)
        if self.space in ("identity", "probs"):
            return mean
        if self.space == "logits":
            scores = mean - mean.max(axis=-1, keepdims=True)
        else:
            scores = self.temperature * np.log(np.maximum(mean, 1e-300))
            scores -= scores.max(axis=-1, keepdims=True)
        rows = np.exp(scores)
        return rows / rows.sum(axis=-1, keepdims=True)

    def weight_bound(self, max_examples: float) -> float:
        """The largest weight a client gives its rows: its example count when size-weighted,
        else 1."""
        return max_examples if self.size_weighted else 1.0

    def row_bound(self, value_bound: float) -> float:
        """Largest ``|summand|`` of a row entry of weight 1: ``value_bound`` for raw
        values, 1 for probabilities, ``-log(floor)`` for logits."""
        if self.space == "identity":
            return value_bound
        if self.space == "logits":
            return float(-np.log(self.floor))
        return 1.0


def fit_encoding(bound: float, num_clients: int, frac_bits: int) -> FixedPointEncoding:
    """The fixed-point encoding for ``num_clients`` summands of ``|value| <= bound``, with
    ``frac_bits`` lowered as far as needed for the sum to fit a 62-bit modulus.

    Raises
    ------
    ConfigError
        Not even :data:`MIN_FRAC_BITS` fractional bits fit.
    """
    for bits in range(frac_bits, MIN_FRAC_BITS - 1, -1):
        try:
            return FixedPointEncoding(bound=bound, num_clients=num_clients, frac_bits=bits)
        except ValueError:
            continue
    raise ConfigError(
        f"secure aggregation cannot encode {num_clients} summands of magnitude up to {bound:g} "
        f"with {MIN_FRAC_BITS} fractional bits in a 62-bit modulus: lower the bound "
        "(fewer examples per client for size-weighted rules) or sample fewer clients"
    )


def count_weighted_summands(
    arrays: Mapping[str, np.ndarray], counts_key: str
) -> dict[str, np.ndarray]:
    """Secure-aggregation summands of per-class statistics: each ``(C, ...)`` array times
    the client's per-class counts, and the counts themselves (float64)."""
    counts = np.asarray(arrays[counts_key], dtype=np.float64)
    out = {counts_key: counts}
    for name, values in arrays.items():
        if name != counts_key:
            out[name] = np.asarray(values, dtype=np.float64) * counts[:, None]
    return out


def count_weighted_means(sums: Mapping[str, np.ndarray], counts_key: str) -> dict[str, np.ndarray]:
    """The count-weighted means per class from :func:`count_weighted_summands` summed over
    clients (zero rows for classes nobody holds), and the total counts."""
    totals = np.asarray(sums[counts_key], dtype=np.float64)
    out = {counts_key: totals}
    for name, values in sums.items():
        if name != counts_key:
            out[name] = np.asarray(values, dtype=np.float64) / np.maximum(totals, 1.0)[:, None]
            out[name][totals <= 0] = 0.0
    return out
