"""What ``python -m simulations.bench`` measures: its workloads, its backends, and the
import floor (the wall time of a bare ``import torch``).

A workload is the Hydra overrides that both paths of a benchmark point (the plain loop and
the simulation) read, and its description, which the harness prints and writes into its
JSON. A backend is the overrides that choose who runs the clients (the simulation only).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simulations.engine import BACKEND_NAMES, IN_PROCESS_BACKENDS

#: ``--workload`` choices.
WORKLOAD_NAMES = ("default", "tiny", "reference")
#: The synthetic workloads' server test set, fixed in size so that each client's
#: evaluation-only predictions on it (part of every fedkd round) cost the same at every N.
TEST_ROWS = 2000
#: Shares of the synthetic dataset that are not client training data, besides the test set:
#: the public proxy (FedAvg does not use it) and each partition's local test split (0.2).
_PROXY_FRACTION = 0.02
_TRAIN_SHARE = (1 - _PROXY_FRACTION) * 0.8
#: ``--workload tiny``: records and epochs per client, where fixed costs dominate.
TINY_SAMPLES, TINY_EPOCHS = 20, 1

#: The reference workload keeps experiment=reference's Dirichlet(0.1) partition (at least 5
#: records per client) up to its own 20 clients. On digits' 1150 client training rows that
#: partition cannot be drawn for 30 or more clients (flwr-datasets gives up after 10 draws,
#: measured at 30, 50 and 100 clients with min_partition_size 2-5), so above 20 clients the
#: partition is IID.
REFERENCE_DIRICHLET_MAX_CLIENTS = 20
#: fedkd refuses a client with fewer than 2 records (``fedkd.data.federated``): digits'
#: 1150 training rows hold at most 575 clients. Above 500 clients the reference workload
#: runs on the reference protocol's other dataset, MNIST-1D at 12,000 samples (7680 client
#: training rows, 2400 test rows).
REFERENCE_DIGITS_MAX_CLIENTS = 500

REFERENCE_RULE = (
    "experiment=reference with strategy=fedavg (digits, the reference MLP with one hidden "
    "layer of 128, 2 local epochs of SGD lr 0.1 batch 32, no local test split, clients "
    "predict on the server test set, no federated evaluation), every client every round; "
    f"Dirichlet(0.1) with min_partition_size 5 up to {REFERENCE_DIRICHLET_MAX_CLIENTS} "
    "clients, IID above (Dirichlet(0.1) cannot be drawn for 30+ clients on digits' 1150 "
    f"training rows); above {REFERENCE_DIGITS_MAX_CLIENTS} clients dataset=mnist1d at "
    "12,000 samples (digits holds at most 575 clients of 2 records)"
)


@dataclass(frozen=True)
class SyntheticWorkload:
    """FedAvg of the default MLP on the ``synthetic`` dataset (20 features, 4 classes, IID),
    ``samples_per_client`` training records and ``epochs`` epochs per client
    (``--workload default``: 1000 and 5; ``tiny``: 20 and 1)."""

    clients: int
    rounds: int
    samples_per_client: int = 1000
    epochs: int = 5
    seed: int = 0
    name: str = "default"

    def overrides(self) -> list[str]:
        """Hydra overrides of the run (the simulation and the plain loop read the same)."""
        pool = round(self.samples_per_client * self.clients / _TRAIN_SHARE)
        num_samples = pool + TEST_ROWS
        return [
            "strategy=fedavg",
            "dataset=synthetic",
            f"dataset.num_samples={num_samples}",
            f"data.test_fraction={TEST_ROWS / num_samples}",
            f"data.proxy_fraction={_PROXY_FRACTION}",
            "partition=iid",
            f"num_clients={self.clients}",
            f"num_rounds={self.rounds}",
            f"client.epochs={self.epochs}",
            f"seed={self.seed}",
            "checkpoint.every=0",
            "progress=false",
        ]

    @property
    def data(self) -> str:
        """The data of this point, in words."""
        return "synthetic, 20 features, 4 classes, iid"

    def describe(self) -> dict[str, Any]:
        """What the workload runs at every N (written into the JSON)."""
        return {
            "name": self.name,
            "description": (
                f"FedAvg of the default MLP on synthetic data (20 features, 4 classes, IID), "
                f"{self.samples_per_client} training records and {self.epochs} epochs of SGD "
                f"per client, local test split 0.2, {TEST_ROWS}-row server test set, "
                "federated evaluation of every client"
            ),
            "method": "fedavg",
            "model": "mlp (default)",
            "data": self.data,
            "samples_per_client": self.samples_per_client,
            "epochs": self.epochs,
        }


@dataclass(frozen=True)
class ReferenceWorkload:
    """``experiment=reference`` with FedAvg for N clients (see :data:`REFERENCE_RULE`)."""

    clients: int
    rounds: int
    seed: int = 0
    name: str = "reference"

    @property
    def dataset(self) -> str:
        """digits, or mnist1d where digits cannot hold this many clients."""
        return "digits" if self.clients <= REFERENCE_DIGITS_MAX_CLIENTS else "mnist1d"

    @property
    def dirichlet(self) -> bool:
        """Whether the reference's Dirichlet(0.1) partition is kept (else IID)."""
        return self.clients <= REFERENCE_DIRICHLET_MAX_CLIENTS

    def overrides(self) -> list[str]:
        """Hydra overrides of the run (the simulation and the plain loop read the same)."""
        items = ["experiment=reference", "strategy=fedavg"]
        if self.dataset != "digits":
            items.append(f"dataset={self.dataset}")  # 12,000 samples under experiment=reference
        if not self.dirichlet:
            # the experiment sets Dirichlet's options, which the iid partitioner refuses
            items += [
                "partition=iid",
                "~partition.alpha",
                "~partition.min_partition_size",
                "~partition.self_balancing",
            ]
        return [
            *items,
            f"num_clients={self.clients}",
            f"num_rounds={self.rounds}",
            f"seed={self.seed}",
            "checkpoint.every=0",
            "progress=false",
        ]

    @property
    def data(self) -> str:
        """The data of this point, in words."""
        data = "digits" if self.dataset == "digits" else "mnist1d, 12,000 samples"
        if self.dirichlet:
            return f"{data}, dirichlet alpha 0.1, min_partition_size 5, self-balancing"
        return f"{data}, iid"

    def describe(self) -> dict[str, Any]:
        """What the workload runs at every N (written into the JSON)."""
        return {
            "name": self.name,
            "description": REFERENCE_RULE,
            "method": "fedavg",
            "model": "mlp, hidden [128] (experiment=reference)",
            "data": "digits (mnist1d above 500 clients); partition as the description says",
            "epochs": 2,
        }


#: A benchmark point's workload: the overrides both paths read, and their description.
Workload = SyntheticWorkload | ReferenceWorkload


def make_workload(
    name: str, clients: int, rounds: int, *, samples_per_client: int = 1000, epochs: int = 5
) -> Workload:
    """The workload ``name`` (one of :data:`WORKLOAD_NAMES`) for ``clients`` clients;
    ``samples_per_client`` and ``epochs`` apply to ``default`` only."""
    if name == "default":
        return SyntheticWorkload(clients, rounds, samples_per_client, epochs)
    if name == "tiny":
        return SyntheticWorkload(clients, rounds, TINY_SAMPLES, TINY_EPOCHS, name="tiny")
    if name == "reference":
        return ReferenceWorkload(clients, rounds)
    raise ValueError(f"workload must be one of {WORKLOAD_NAMES}, got {name!r}")


# ---------------------------------------------------------------------- backends
#: Backends whose clients run on Ray actors (``backend.engine`` applies); the others run
#: every client in the harness's child process (one "actor").
RAY_BACKENDS = tuple(name for name in BACKEND_NAMES if name not in IN_PROCESS_BACKENDS)


@dataclass(frozen=True)
class Backend:
    """One entry of ``--backend``: ``NAME`` or ``NAME:ENGINE`` (``ray_cpu:flower``)."""

    name: str
    engine: str | None = None  # None: the backend's own default (fedkd for Ray backends)

    @classmethod
    def parse(cls, spec: str) -> Backend:
        """``inline``, ``batched``, ``ray_cpu``, ``ray_cpu:flower``, ...; ValueError if bad."""
        name, _, engine = spec.strip().partition(":")
        if not name:
            raise ValueError(f"--backend: empty backend name in {spec!r}")
        if engine and name not in RAY_BACKENDS:
            raise ValueError(
                f"--backend {spec!r}: an engine (':{engine}') applies to {RAY_BACKENDS} only"
            )
        return cls(name, engine or None)

    @property
    def label(self) -> str:
        """How results name it: ``inline``, ``ray_cpu:fedkd``, ``ray_cpu:flower``."""
        return self.name if self.engine is None else f"{self.name}:{self.engine}"

    def overrides(self) -> list[str]:
        """The simulation's overrides that select this backend."""
        items = [f"backend={self.name}"]
        if self.engine is not None:
            items.append(f"backend.engine={self.engine}")
        return items

    def resolved_engine(self, extra: Sequence[str] = ()) -> str | None:
        """Who runs the clients: ``fedkd`` or ``flower`` for Ray backends (from the spec,
        else a ``backend.engine=`` in ``extra``, else fedkd), None in process."""
        if self.name not in RAY_BACKENDS:
            return None
        if self.engine is not None:
            return self.engine
        for override in extra:
            if override.startswith("backend.engine="):
                return override.split("=", 1)[1]
        return "fedkd"


def parse_backends(spec: str) -> list[Backend]:
    """A comma list of backends (``inline,batched,ray_cpu``), each once; ValueError if bad."""
    backends = [Backend.parse(item) for item in spec.split(",") if item.strip()]
    if not backends:
        raise ValueError("--backend names no backend")
    labels = [b.label for b in backends]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--backend names a backend twice: {spec!r}")
    return backends


# ---------------------------------------------------------------------- the import floor
def import_floor_seconds(repeats: int = 3) -> float:
    """Median wall time of a bare ``python -c "import torch"`` subprocess: the part of any
    run's start-up that no engine can remove."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - started)
    return float(statistics.median(times))
