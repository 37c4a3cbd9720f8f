"""FedAdagrad baseline: FedAvg whose server applies Adagrad to the mean client update."""

from __future__ import annotations

from typing import Any, ClassVar

from flwr.serverapp.strategy import FedAdagrad as FlowerFedAdagrad

from strategies.fedopt import AveragedReplies, FedOpt


class _FlowerFedAdagrad(FlowerFedAdagrad, AveragedReplies):
    """Flower's FedAdagrad stepping from the mean fedkd computed (:class:`AveragedReplies`)."""


class FedAdagrad(FedOpt):
    """FedAdagrad (Reddi et al., 2021, "Adaptive Federated Optimization", ICLR,
    Algorithm 2 with ``beta_1 = 0``).

    Round ``t``, with ``Delta_t`` the example-weighted mean client update (see
    :class:`~strategies.fedopt.FedOpt`)::

        m_t = Delta_t
        v_t = v_{t-1} + Delta_t^2
        x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

    The step is ``flwr.serverapp.strategy.FedAdagrad.aggregate_train``, unchanged (``v``
    starts at zero).

    Parameters
    ----------
    assets, fraction_train, fraction_evaluate, min_train_replies, on_too_few_replies
        See :class:`strategies.base.FedKDStrategy`.
    eta : float
        Server learning rate (default 0.1, Flower's default).
    tau : float
        Adaptivity (default 1e-3).

    The client learning rate ``eta_l`` is ``client.lr``. Client keys honoured: as
    :class:`~strategies.fedavg.FedAvg`.
    """

    flower_strategy = _FlowerFedAdagrad
    uses_betas: ClassVar[bool] = False

    def __init__(
        self, assets: Any, *, eta: float = 0.1, tau: float = 1e-3, **round_options: Any
    ) -> None:
        super().__init__(assets, eta=eta, beta_1=0.0, beta_2=0.0, tau=tau, **round_options)
