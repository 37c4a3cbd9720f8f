"""What methods call: server-side client models, teacher targets, the student's distillation,
and the distillation-loss checks (a mixin of :class:`strategies.base.FedKDStrategy`).

Everything here works on validated, decoded :class:`~strategies.core.validation.ClientReply`
values and the run's assets; none of it touches messages or the round loop.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord
from torch import nn

from fedkd.distill import teacher_targets
from fedkd.distill.losses import DistillLoss, KDLoss
from fedkd.distill.spaces import (
    FLOAT16_FLOOR,
    FLOAT32_FLOOR,
    TEACHER_SPACES,
    check_teacher_space,
    space_targets,
)
from fedkd.errors import ConfigError
from fedkd.models import FedKDModel, model_from_config
from fedkd.train import predict_probs
from fedkd.wire.encoding import EncodingSpec
from fedkd.wire.payloads import ModelWeights, ProxyPredictions
from strategies.core import checks
from strategies.core.assets import RunAssets, rule_options
from strategies.core.distillation import ServerDistillation, validation_split
from strategies.core.transport import Federation
from strategies.core.validation import ClientReply, RoundState


class MethodToolkit:
    """Helpers a method's ``aggregate`` uses; the host strategy provides the attributes."""

    assets: RunAssets
    federation: Federation
    distillation: ServerDistillation
    target_rule: dict[str, Any]
    encoding: EncodingSpec
    _architecture_models: dict[int, FedKDModel]
    has_student: ClassVar[bool]
    keeps_client_models: ClassVar[bool]
    provides_teacher_models: bool
    #: The metric the method's paper reports, shown first in the run's table and summary
    #: (``headline`` in ``summary.json``): the server student, or for methods whose paper
    #: has no global model (FedMD, DS-FL, FD, FedProto, local-only) the clients' own models.
    headline_metric: ClassVar[str] = "global_on_global_test_accuracy"
    #: Where mean teachers are averaged (:mod:`fedkd.distill.spaces`); methods that take
    #: ``strategy.teacher_space`` set it, the others average probabilities.
    teacher_space: str = "probs"
    #: The temperature of ``teacher_space="tempered_probs"``.
    teacher_temperature: float = 1.0
    #: Probabilities below this read as this before a log (the uplink's resolution).
    teacher_floor: float = FLOAT32_FLOOR

    # ------------------------------------------------------------------ helpers for methods
    def architecture_model(self, index: int) -> FedKDModel:
        """A server-side model object of client architecture ``index`` (built once)."""
        model = self._architecture_models.get(index)
        if model is None:
            model = model_from_config(
                self.assets.setup.architectures[index],
                input_shape=self.assets.data.input_shape,
                num_classes=self.assets.data.num_classes,
                seed=self.assets.setup.seed,
            ).to(self.assets.device)
            self._architecture_models[index] = model
        return model

    def proxy_probs(self, replies: Sequence[ClientReply]) -> np.ndarray:
        """The clients' decoded proxy predictions: (clients, proxy rows, classes)."""
        return np.stack([r.values[ProxyPredictions.name] for r in replies])

    def teacher_targets(
        self, client_probs: np.ndarray, replies: Sequence[ClientReply]
    ) -> np.ndarray:
        """Combine per-client probabilities with :attr:`target_rule` (``aggregation``), a
        mean rule in :attr:`teacher_space`."""
        rule = self.target_rule
        if self.teacher_space != "probs":
            sized = rule.get("name", "mean") == "size_weighted"
            return space_targets(
                client_probs,
                space=self.teacher_space,
                num_examples=[r.num_examples for r in replies] if sized else None,
                temperature=self.teacher_temperature,
                floor=self.teacher_floor,
            )
        histograms = np.array(
            [self.federation.label_histograms.get(r.partition_id, []) for r in replies]
        )
        return teacher_targets(
            client_probs,
            rule=rule.get("name", "mean"),
            num_examples=np.array([r.num_examples for r in replies], dtype=np.float64),
            label_histograms=histograms if histograms.ndim == 2 and histograms.size else None,
            **rule_options(rule),
        )

    def predict_with_weights(
        self, replies: Sequence[ClientReply], inputs: np.ndarray
    ) -> np.ndarray:
        """Run every client's returned weights on ``inputs`` on the server: (clients, N, C)."""
        outputs = []
        for reply in replies:
            model = self.architecture_model(reply.architecture)
            state = reply.values[ModelWeights.name].to_torch_state_dict()
            model.load_state_dict(state, strict=True)
            outputs.append(predict_probs(model, inputs, device=self.assets.device))
        return np.stack(outputs)

    def teacher_models(self, replies: Sequence[ClientReply]) -> list[FedKDModel]:
        """One server-side model per reply, holding that client's returned weights."""
        return [self.client_model(r.partition_id, r.values[ModelWeights.name]) for r in replies]

    def client_model(self, partition_id: int, weights: ArrayRecord) -> FedKDModel:
        """A new server-side model of the client's architecture holding ``weights``."""
        model = copy.deepcopy(
            self.architecture_model(self.federation.architecture_of.get(partition_id, 0))
        )
        model.load_state_dict(weights.to_torch_state_dict(), strict=True)
        return model

    def distill_student(
        self,
        state: RoundState,
        inputs: np.ndarray,
        targets: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        model: FedKDModel | None = None,
        teachers: Sequence[nn.Module] = (),
    ) -> None:
        """Distill ``model`` (default: the student) toward ``targets`` on ``inputs``; for the
        student, the round's row records the test accuracy before and after, the loss and
        the agreement (:meth:`ServerDistillation.fit`)."""
        student = model is None or model is self.assets.student
        data = self.assets.data
        state.metrics.update(
            self.distillation.fit(
                self.assets.student if model is None else model,
                state.server_round,
                inputs,
                targets,
                labels=labels,
                teachers=teachers,
                test=(data.test_x, data.test_y) if student else None,
            )
        )

    def validation_split(self, server_round: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of this round's proxy rows to distill on and to validate on."""
        return validation_split(
            size,
            fraction=self.distillation.options.validation_fraction,
            seed=self.assets.setup.seed,
            server_round=server_round,
        )

    def set_teacher_space(
        self, space: str, *, spaces: Sequence[str] = TEACHER_SPACES, from_uplink: bool
    ) -> None:
        """Check and adopt ``strategy.teacher_space``: the rule must be a mean outside
        ``probs``; teachers averaged from the clients' uploaded rows (``from_uplink``) need
        rows that keep small probabilities (float32, or float16 read with its own floor);
        ``tempered_probs`` needs a ``kd`` loss at a fixed temperature, which is then told
        that the targets are already softened."""
        self.teacher_space = check_teacher_space(
            space, self.target_rule.get("name", "mean"), spaces=spaces
        )
        if space == "probs":
            return
        encoding = self.encoding.name
        if from_uplink and encoding not in ("float32", "float16"):
            raise ConfigError(
                f"strategy.teacher_space={space} takes the log of every probability, and "
                f"encoding={encoding} sends zeros for the small ones: use encoding=float32 or "
                "float16, or strategy.teacher_space=probs"
            )
        if from_uplink and encoding == "float16":
            self.teacher_floor = FLOAT16_FLOOR
        if space == "tempered_probs":
            loss = self.assets.distill_loss
            if not isinstance(loss, KDLoss) or loss.temperature_end is not None:
                raise ConfigError(
                    "strategy.teacher_space=tempered_probs averages the clients at the "
                    "distillation temperature: it needs distill=kd without temperature_end"
                )
            self.teacher_temperature = loss.temperature
            loss.teacher_temperature = loss.temperature

    # ------------------------------------------------------------------ distillation loss
    def distilled_architectures(self) -> list[int]:
        """Client architectures the server distills besides the student (FedDF's prototypes)."""
        return []

    def digests_on_clients(self) -> bool:
        """Whether clients run distillation steps (a digest) with the ``distill`` loss."""
        return self.keeps_client_models and int(getattr(self, "digest_epochs", 0)) > 0

    def check_distill_loss(self) -> None:
        """Fail before Ray when the ``distill`` loss cannot work with this run's models
        (:func:`strategies.core.checks.check_distill_loss`)."""
        checks.check_distill_loss(
            self.assets,
            method=type(self).__name__,
            architecture_model=self.architecture_model,
            probe_bind=self._probe_bind,
            provides_teacher_models=self.provides_teacher_models,
            distills_student=self.has_student and self.distillation.options.epochs > 0,
            distilled_architectures=self.distilled_architectures(),
            digests_on_clients=self.digests_on_clients(),
        )

    def _probe_bind(
        self, loss: DistillLoss, student: FedKDModel, teachers: Sequence[FedKDModel]
    ) -> None:
        self.distillation.probe_bind(
            loss, student, teachers, input_shape=self.assets.data.input_shape
        )
