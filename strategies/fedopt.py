"""Adaptive server optimizers (FedOpt): the shared step of FedAdam, FedYogi and FedAdagrad."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.fedopt import FedOpt as FlowerFedOpt
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedkd.errors import ConfigError
from fedkd.wire import keys
from fedkd.wire.payloads import ModelWeights
from strategies.base import ClientReply, RoundState, weighted_average
from strategies.core.options import check_types
from strategies.fedavg import FedAvg

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptimizerOptions:
    """The server optimizer's hyper-parameters (``strategy.eta``, ``beta_1``, ...).

    Parameters
    ----------
    eta : float
        Server learning rate, > 0.
    beta_1 : float
        First-moment (momentum) decay, in [0, 1).
    beta_2 : float
        Second-moment decay, in [0, 1) (unused by FedAdagrad).
    tau : float
        Adaptivity: added to ``sqrt(v)`` in the denominator, > 0.
    """

    eta: float
    beta_1: float
    beta_2: float
    tau: float

    def __post_init__(self) -> None:
        check_types(self, prefix="strategy.")
        if not self.eta > 0:
            raise ConfigError(f"strategy.eta must be > 0, got {self.eta}")
        if not self.tau > 0:
            raise ConfigError(f"strategy.tau must be > 0, got {self.tau}")
        for name in ("beta_1", "beta_2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"strategy.{name} must be in [0, 1), got {value}")


class AveragedReplies(FlowerFedAvg):
    """Flower's FedAvg whose ``aggregate_train`` returns the mean fedkd set in :attr:`averaged`.

    Flower's FedAdam / FedYogi / FedAdagrad compute the server step inside ``aggregate_train``
    after ``super().aggregate_train`` averaged the reply Messages. fedkd validates and decodes
    replies itself, so this class stands in for that ``super()`` (it comes after FedOpt in the
    MRO of ``class X(FedAdam, AveragedReplies)``): Flower's optimizer code then runs unchanged
    on the mean :meth:`FedOpt.aggregate` computed with Flower's ``aggregate_arrayrecords``.
    """

    averaged: ArrayRecord | None = None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The mean set in :attr:`averaged` (``replies`` are ignored)."""
        return self.averaged, None


class FedOpt(FedAvg):
    """Adaptive Federated Optimization (Reddi et al., 2021, "Adaptive Federated
    Optimization", ICLR; Algorithm 2): FedAvg whose server applies an adaptive optimizer
    to the mean client update, taken as a pseudo-gradient.

    Round ``t``, with ``x_t`` the global weights and ``n_k`` client ``k``'s examples::

        Delta_t = sum_k n_k x_k / sum_k n_k - x_t       (example-weighted, float32)
        m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t
        v_t = <FedAdam | FedYogi | FedAdagrad rule>
        x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

    The averaging and the update are Flower's own (``aggregate_arrayrecords`` and the
    ``aggregate_train`` of ``flwr.serverapp.strategy.FedAdam`` / ``FedYogi`` /
    ``FedAdagrad``), so the mean accumulates in float32 as in Flower, unlike fedkd's
    :class:`~strategies.fedavg.FedAvg`. Flower starts ``m`` and ``v`` at zero. Only
    floating-point arrays take the optimizer step; integer buffers (batch-norm counters)
    take the plain example-weighted mean. ``m`` and ``v`` are saved in checkpoints.

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies, on_too_few_replies
        See :class:`strategies.base.FedKDStrategy`.
    eta, beta_1, beta_2, tau
        :class:`ServerOptimizerOptions`; the client learning rate ``eta_l`` of the paper
        is ``client.lr``.

    Client keys honoured: as :class:`~strategies.fedavg.FedAvg`.
    """

    #: Flower's strategy whose ``aggregate_train`` holds the update (mixed with
    #: :class:`AveragedReplies`).
    flower_strategy: ClassVar[type[FlowerFedOpt]]
    #: FedAdagrad has no betas (Flower fixes them at 0).
    uses_betas: ClassVar[bool] = True
    checkpoint_attributes: ClassVar[tuple[str, ...]] = (
        *FedAvg.checkpoint_attributes,
        "m_t",
        "v_t",
    )

    def __init__(
        self,
        assets: Any,
        *,
        eta: float,
        beta_1: float,
        beta_2: float,
        tau: float,
        **round_options: Any,
    ) -> None:
        super().__init__(assets, **round_options)
        self.optimizer_options = ServerOptimizerOptions(eta, beta_1, beta_2, tau)
        #: Flower's first and second moments, by array name (None before the first step).
        self.m_t: dict[str, np.ndarray] | None = None
        self.v_t: dict[str, np.ndarray] | None = None
        #: The global weights sent this round (what ``Delta_t`` is measured from).
        self.sent_arrays: dict[str, np.ndarray] = {}

    def flower_optimizer(self) -> FlowerFedOpt:
        """Flower's strategy set up with this run's hyper-parameters."""
        options = self.optimizer_options
        kwargs: dict[str, Any] = {
            "eta": options.eta,
            "eta_l": self.assets.setup.local.lr,
            "tau": options.tau,
        }
        if self.uses_betas:
            kwargs.update(beta_1=options.beta_1, beta_2=options.beta_2)
        return self.flower_strategy(**kwargs)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global weights sent (as Flower's FedOpt does), then send them."""
        self.sent_arrays = {name: array.numpy() for name, array in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate(self, state: RoundState, replies: list[ClientReply]) -> ArrayRecord:
        """Flower's mean and server optimizer step, loaded into the student."""
        weights = [r.values[ModelWeights.name] for r in replies]
        names = list(weights[0].keys())
        # the student holds the global weights too (when configure_train has not run)
        sent = self.sent_arrays or {
            n: v.detach().cpu().numpy() for n, v in self.assets.student.state_dict().items()
        }
        stepped = [n for n in names if np.issubdtype(sent[n].dtype, np.floating)]
        records = [
            RecordDict(
                {
                    keys.ARRAYS: ArrayRecord({n: w[n] for n in stepped}),
                    keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: r.num_examples}),
                }
            )
            for w, r in zip(weights, replies, strict=True)
        ]
        optimizer = self.flower_optimizer()
        optimizer.averaged = aggregate_arrayrecords(records, keys.NUM_EXAMPLES)  # type: ignore[attr-defined]
        optimizer.current_arrays = {n: sent[n] for n in stepped}
        optimizer.m_t, optimizer.v_t = self.m_t, self.v_t
        new_record, _ = optimizer.aggregate_train(state.server_round, [])
        assert new_record is not None  # AveragedReplies returns the mean set above
        self.m_t, self.v_t = optimizer.m_t, optimizer.v_t
        # the rest (integer buffers) takes the plain mean, in its own dtype
        rest = weighted_average(
            [{n: w[n].numpy() for n in names if n not in stepped} for w in weights],
            [float(r.num_examples) for r in replies],
        )
        new_arrays = {
            n: new_record[n].numpy().astype(sent[n].dtype, copy=False) if n in stepped else rest[n]
            for n in names
        }
        record = ArrayRecord({n: Array(np.ascontiguousarray(v)) for n, v in new_arrays.items()})
        self.assets.student.load_state_dict(record.to_torch_state_dict(), strict=True)
        return record

    def summary(self) -> None:
        """Log the optimizer's settings, then the common summary."""
        options = self.optimizer_options
        betas = f" beta_1={options.beta_1:g} beta_2={options.beta_2:g}" if self.uses_betas else ""
        logger.info("%s: eta=%g%s tau=%g", type(self).__name__, options.eta, betas, options.tau)
        super().summary()
