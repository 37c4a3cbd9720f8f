"""A run's plan: the composed config validated and everything the server builds from it.

:func:`prepare_run` is where every config error surfaces (a :class:`ConfigError` naming the
key) before any Ray worker starts; the ServerApp, the audit and the runners take its
:class:`RunPlan`. The typed options of every config block are parsed once, into one
:class:`RunOptions` (:func:`build_options`), and passed whole from there; the composed YAML
is the source of their defaults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from fedkd.config import check_top_level, options, strategy_class
from fedkd.data import get_federated_data
from fedkd.devices import resolve_device
from fedkd.distill import build_loss, loss_options
from fedkd.distill.augment import build_augmentation
from fedkd.distill.self_train import check_born_again
from fedkd.errors import ConfigError
from fedkd.models import FedKDModel, model_from_config
from fedkd.privacy import PrivacySpec
from fedkd.privacy.config import public_examples
from fedkd.privacy.guarantees import NOISE_PARAMETER, PlannedRun, calibrate, worst_case_epsilon
from fedkd.reliability.attacks import AttackSpec
from fedkd.reliability.faults import FaultSpec
from fedkd.run.report import ReportSpec
from fedkd.run.trackers import TrackerSpec
from fedkd.setup import FederationSetup, LocalTraining, architecture_index
from fedkd.wire import keys
from fedkd.wire.encoding import EncodingSpec
from fedkd.wire.ledger import check_allowed
from fedkd.wire.payloads import TestPredictions
from fedkd.wire.secure import SecAggSpec
from strategies.base import FedKDStrategy, RunAssets
from strategies.core import checks

logger = logging.getLogger(__name__)

DEFAULT_ROUND_TIMEOUT_SECONDS = 3600.0


@dataclass(frozen=True)
class RunOptions:
    """Every typed option of a run, parsed once from the composed config by :func:`build_options`.

    Attributes
    ----------
    setup : FederationSetup
        What every client needs (``dataset``, ``partition``, ``model``, ``data.*``, the
        ``client:`` block as :class:`~fedkd.setup.LocalTraining`, ``backend`` device and
        threads, ``distill``, ``augment``, ``privacy`` and ``encoding`` as sent).
    privacy : PrivacySpec
        The ``privacy`` group.
    encoding : EncodingSpec
        The ``encoding`` block.
    faults : FaultSpec
        The ``faults`` block.
    attack : AttackSpec
        The ``attack`` block.
    report : ReportSpec
        The ``report`` block.
    trackers : TrackerSpec
        The ``tracker`` key and the ``trackers`` block (``report.tensorboard`` included).
    num_rounds : int
        ``num_rounds``.
    round_timeout : float
        ``round_timeout``: seconds the server waits for a round's replies.
    checkpoint_every : int
        ``checkpoint.every``: a checkpoint every this many rounds and after the last (0: never).
    distill : dict
        The ``distill`` group resolved (:func:`resolve_distill`).
    aggregation : dict
        The ``aggregation`` group: the teacher-target rule's ``name`` and options.
    """

    setup: FederationSetup
    privacy: PrivacySpec
    encoding: EncodingSpec
    faults: FaultSpec
    attack: AttackSpec
    report: ReportSpec
    trackers: TrackerSpec
    num_rounds: int
    round_timeout: float
    checkpoint_every: int
    distill: dict[str, Any]
    aggregation: dict[str, Any]


@dataclass
class RunPlan:
    """A validated run: the plain config, its typed options and everything built from them
    on the server."""

    config: dict[str, Any]
    options: RunOptions
    assets: RunAssets
    strategy: FedKDStrategy


def build_options(cfg: dict[str, Any], strategy_cls: type) -> RunOptions:
    """Parse and check every block of the composed ``cfg`` (cheap: no data is built), in
    the order their errors surface; ``strategy_cls`` tells whether the run has clients."""
    faults = FaultSpec.from_config(cfg.get("faults"))
    faults.check_backend(str(cfg["backend"]["name"]))
    attack = AttackSpec.from_config(cfg.get("attack"))
    if (faults.enabled or attack.enabled) and not getattr(strategy_cls, "has_clients", True):
        raise ConfigError(
            f"faults/attack act on clients, but strategy {cfg['strategy']['name']!r} has none"
        )
    round_timeout = cfg.get("round_timeout", DEFAULT_ROUND_TIMEOUT_SECONDS)
    if not isinstance(round_timeout, int | float) or round_timeout <= 0:
        raise ConfigError(f"round_timeout must be > 0 seconds, got {round_timeout!r}")
    every = checkpoint_every(cfg)
    report = ReportSpec.from_config(cfg.get("report"))  # and tensorboard installed when asked
    trackers = TrackerSpec.from_config(  # and each tracker's package installed
        cfg.get("tracker"), cfg.get("trackers"), report_tensorboard=report.tensorboard
    )
    encoding = EncodingSpec.from_config(cfg.get("encoding"))
    distill = resolve_distill(dict(cfg["distill"]))
    privacy = PrivacySpec.from_config(cfg.get("privacy"))
    setup = build_setup({**cfg, "distill": distill}, privacy, encoding=encoding)
    return RunOptions(
        setup=setup,
        privacy=privacy,
        encoding=encoding,
        faults=faults,
        attack=attack,
        report=report,
        trackers=trackers,
        num_rounds=cfg["num_rounds"],
        round_timeout=float(round_timeout),
        checkpoint_every=every,
        distill=distill,
        aggregation=dict(cfg.get("aggregation") or {"name": "mean"}),
    )


def build_setup(
    cfg: dict[str, Any],
    privacy: PrivacySpec | None = None,
    *,
    encoding: EncodingSpec | None = None,
) -> FederationSetup:
    """The client-facing part of the config (``privacy`` and ``encoding`` when already
    parsed; the ``encoding`` block is parsed here otherwise)."""
    if encoding is None:
        encoding = EncodingSpec.from_config(cfg.get("encoding"))
    data_cfg = cfg.get("data", {})
    backend = cfg["backend"]
    try:
        local = LocalTraining(**cfg.get("client", {}))
    except TypeError as exc:
        raise ConfigError(f"client: {exc}") from exc
    return FederationSetup(
        dataset=dict(cfg["dataset"]),
        partition=dict(cfg["partition"]),
        num_clients=cfg["num_clients"],
        seed=cfg["seed"],
        data_seed=cfg.get("data_seed"),
        model=dict(cfg["model"]),
        local=local,
        proxy_fraction=data_cfg.get("proxy_fraction", 0.2),
        proxy_labeled=data_cfg.get("proxy_labeled", False),
        test_fraction=data_cfg.get("test_fraction", 0.2),
        local_test_fraction=data_cfg.get("local_test_fraction", 0.2),
        proxy_size=data_cfg.get("proxy_size"),
        proxy_classes=data_cfg.get("proxy_classes"),
        proxy_dataset=data_cfg.get("proxy_dataset"),
        device=str(backend.get("device", "cpu")),
        torch_threads=backend.get("torch_threads", 1),
        distill=dict(cfg["distill"]),
        augment=_augment_config(cfg),
        # clients need the spec under a mechanism, and for the audit's canaries without one
        privacy=privacy.to_dict()
        if privacy is not None and (privacy.enabled or privacy.audit)
        else None,
        encoding=encoding.to_dict(),
    )


def _augment_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    spec = cfg.get("augment")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"augment must be a mapping with 'transforms', got {spec!r}")
    return dict(spec) if spec.get("transforms") else None


def resolve_distill(distill_cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``distill`` group without ``null`` options, so the loss class's defaults apply."""
    loss_options(str(distill_cfg.get("name")))  # unknown names fail here, naming the key
    return {k: v for k, v in distill_cfg.items() if v is not None and not str(k).startswith("_")}


def _build(spec: dict[str, Any], key: str, data: Any, seed: int) -> FedKDModel:
    try:
        return model_from_config(
            spec, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed
        )
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def prepare_run(cfg: dict[str, Any]) -> RunPlan:
    """Validate the config and build data, student, loss and strategy.

    Everything that can be wrong in a config fails here, with a :class:`ConfigError`
    naming the key, before any Ray worker starts. The data is cached per process, so the
    ServerApp (which runs in this process under the simulation engine) reuses it.
    """
    check_top_level(cfg)
    cls = strategy_class(cfg["strategy"])
    if not issubclass(cls, FedKDStrategy):
        raise ConfigError(f"strategy._target_ {cls.__name__} is not a FedKDStrategy")
    run_options = build_options(cfg, cls)  # cheap: before building data
    checks.check_target_rule(
        run_options.aggregation, method=cfg["strategy"]["name"], forms_ensemble=cls.forms_ensemble
    )
    cfg["distill"] = dict(run_options.distill)  # the config a run directory records, resolved
    setup, privacy, encoding = run_options.setup, run_options.privacy, run_options.encoding
    if cls.requires_student_architecture and cfg["model"] != cfg["student"]:
        kind = "mixed architectures" if cfg["model"]["name"] == "hetero" else "another architecture"
        raise ConfigError(
            f"strategy {cfg['strategy']['name']!r} averages client weights into the student, so "
            f"model and student must be the same single architecture; got {kind} "
            f"(model={cfg['model']}, student={cfg['student']})"
        )
    data = get_federated_data(**setup.data_kwargs())
    for spec in setup.architectures:  # every client architecture must build too
        _build(spec, "model", data, setup.seed)
    for partition_id in range(setup.num_clients):  # and every client must have one
        architecture_index(setup.model, partition_id)
    run_options.attack.check_classes(data.num_classes)
    encoding.check_classes(data.num_classes)
    student = _build(cfg["student"], "student", data, setup.seed)
    device = resolve_device(setup.device)
    distill_loss = build_loss(cfg["distill"]["name"], **options(cfg["distill"]))
    augmentation = build_augmentation(setup.augment, data.input_shape)
    check_born_again(setup.local.born_again)
    check_allowed(privacy)
    assets = RunAssets(
        setup=setup,
        data=data,
        student=student.to(device),
        distill_loss=distill_loss,
        device=device,
        aggregation=dict(run_options.aggregation),
        student_config=dict(cfg["student"]),
        distill_config=dict(cfg["distill"]),
        augmentation=augmentation,
        privacy=privacy,
        faults=run_options.faults,
        attack=run_options.attack,
        round_timeout=run_options.round_timeout,
        client_test_predictions=client_test_predictions(cfg, privacy),
        secagg=SecAggSpec.from_config(cfg.get("secagg")),
    )
    try:
        strategy = cls(assets, **options(cfg["strategy"]))
    except TypeError as exc:
        raise ConfigError(f"strategy {cfg['strategy']['name']!r}: {exc}") from exc
    checks.check_min_train_replies(
        strategy.options, num_clients=setup.num_clients, has_clients=strategy.has_clients
    )
    strategy.check_distill_loss()
    strategy.check_privacy()
    strategy.check_secure_aggregation()
    if privacy.enabled:
        strategy = plan_privacy(cls, cfg, assets, strategy, run_options.num_rounds)
        assets, privacy = strategy.assets, strategy.assets.privacy
        run_options = replace(run_options, setup=assets.setup, privacy=privacy)
    if strategy.regularizes_local_training and (
        setup.local.self_distill is not None or setup.local.born_again is not None
    ):
        logger.warning(
            "client.self_distill / client.born_again have no effect with strategy %r: its "
            "clients train with the method's own regularized loss",
            cfg["strategy"]["name"],
        )
    if not encoding.lossless and not strategy.shares_proxy_predictions:
        logger.warning(
            "encoding.name=%s applies to shared proxy predictions only; strategy %r shares "
            "none, so its uploads are unchanged",
            encoding.name,
            cfg["strategy"]["name"],
        )
    return RunPlan(config=cfg, options=run_options, assets=assets, strategy=strategy)


def checkpoint_every(cfg: dict[str, Any]) -> int:
    """``checkpoint.every``: write a checkpoint every this many rounds (0: never)."""
    spec = cfg.get("checkpoint") or {}
    if not isinstance(spec, dict) or set(spec) - {"every"}:
        raise ConfigError(f"checkpoint must be a mapping with the key 'every', got {spec!r}")
    every = spec.get("every", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(f"checkpoint.every must be an integer >= 0 (0: off), got {every!r}")
    return every


def client_test_predictions(cfg: dict[str, Any], privacy: PrivacySpec) -> bool:
    """``diagnostics.client_test_predictions``: every client's predictions on the server
    test set (the teacher ensemble's and each client model's test accuracy).

    ``null`` (default): on unless a mechanism leaves them unprotected (on without one and
    under ``dpsgd``, whose models' outputs are covered; off under ``logit_dp`` and
    ``pate``). ``true`` under such a mechanism needs ``test-probs`` in
    ``privacy.allow_unprotected``.
    """
    block = cfg.get("diagnostics") or {}
    if not isinstance(block, dict):
        raise ConfigError(f"diagnostics must be a mapping, got {block!r}")
    unknown = sorted(set(block) - {"client_test_predictions"})
    if unknown:
        raise ConfigError(
            f"unknown option(s) {['diagnostics.' + k for k in unknown]}; "
            "allowed: ['diagnostics.client_test_predictions']"
        )
    value = block.get("client_test_predictions")
    if value is not None and not isinstance(value, bool):
        raise ConfigError(
            f"diagnostics.client_test_predictions must be true, false or null, got {value!r}"
        )
    protected = TestPredictions().protection(keys.TEST_PROBS, privacy) != "none"
    allowed = protected or privacy.sends_unprotected(keys.TEST_PROBS)
    if value is None:
        return not privacy.enabled or protected
    if value and not allowed:
        raise ConfigError(
            f"diagnostics.client_test_predictions=true sends every client's raw predictions "
            f"on the server test set, which privacy={privacy.name} does not protect; add "
            f"{keys.TEST_PROBS} to privacy.allow_unprotected to send them anyway"
        )
    return value


def plan_privacy(
    cls: type, cfg: dict[str, Any], assets: RunAssets, strategy: FedKDStrategy, num_rounds: int
) -> FedKDStrategy:
    """Calibrate ``privacy.target_epsilon`` into the noise (rebuilding the strategy with the
    calibrated mechanism) and state the run's worst-case record-level epsilon, before any
    client runs (:mod:`fedkd.privacy.guarantees`)."""
    spec, data, local = assets.privacy, assets.data, assets.setup.local
    clients = list(range(assets.setup.num_clients))
    plan = strategy.privacy_plan(strategy.train_config(1), 1)
    run = PlannedRun(
        num_rounds=num_rounds,
        clients=clients,
        proxy_rows=plan.proxy_rows,
        client_examples={
            p: public_examples(spec, len(data.client_data(p).train_y), local.batch_size)
            for p in clients
        },
        local_epochs=plan.local_epochs,
        batch_size=local.batch_size,
        sample_rate=strategy.fraction_train,
    )
    if spec.target_epsilon is not None:
        spec = calibrate(spec, run)
        name = NOISE_PARAMETER[spec.name]
        logger.info(
            "privacy.target_epsilon=%g: privacy.%s calibrated to %.6g",
            spec.target_epsilon,
            name,
            getattr(spec, name),
        )
        setup = replace(assets.setup, privacy=spec.to_dict())
        assets = replace(assets, setup=setup, privacy=spec)
        strategy = cls(assets, **options(cfg["strategy"]))
    assert strategy.privacy is not None
    strategy.privacy.worst_case_epsilon = worst_case_epsilon(spec, run)
    return strategy
