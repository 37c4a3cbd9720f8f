"""The federated view's types: :class:`FederatedData`, :class:`ClientData` and the local split."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from fedkd.data.splits import _LOCAL_SPLIT_STREAM

#: Value of :attr:`FederatedData.proxy_source` when the proxy is split off the private data.
PROXY_SOURCE_SPLIT = "split"


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's local data: its partition split into local train and test parts.

    Parameters
    ----------
    train_x, train_y : np.ndarray
        Local training inputs (float32) and labels (int64).
    test_x, test_y : np.ndarray
        Local test inputs and labels (may be empty when ``local_test_fraction == 0``).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A dataset split for federated distillation.

    The arrays are shared by every user of a cached instance (see
    :func:`fedkd.data.federated.get_federated_data`): treat them as read-only.

    Parameters
    ----------
    name : str
        Dataset name.
    num_classes : int
        Number of classes.
    input_shape : tuple[int, ...]
        Shape of one input sample.
    train_x, train_y : np.ndarray
        The training pool the clients are partitioned from.
    partitions : tuple[np.ndarray, ...]
        Per client, sorted int64 indices into ``train_x``.
    proxy_x : np.ndarray
        Public proxy inputs (for distillation).
    proxy_y : np.ndarray | None
        Proxy labels, or None when the proxy is unlabeled. Always in the private label
        space ``0..num_classes-1`` when present.
    test_x, test_y : np.ndarray
        Held-out server test set.
    local_test_fraction : float
        Fraction of each client's partition used as its local test set.
    seed : int
        The data seed every split was derived from (the run's ``data_seed``, or its
        ``seed`` when ``data_seed`` is null); it also seeds :meth:`client_data`.
    proxy_source : str
        Where the proxy comes from: ``"split"`` (split off the private data) or the
        registry name of the other dataset it was drawn from (``proxy_dataset``).
    proxy_labels_for_diagnostics : np.ndarray | None
        The true proxy labels (int64, aligned with ``proxy_x``) whenever the source has
        them, even when the proxy is unlabeled for training (``proxy_y`` is None). For
        reporting only (e.g. class overlap between proxy and private data):
        **strategies must not train on it** -- use ``proxy_y``. When the proxy comes from
        another dataset with a different ``num_classes`` these are that dataset's class
        ids, not private ones.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_x: np.ndarray
    train_y: np.ndarray
    partitions: tuple[np.ndarray, ...]
    proxy_x: np.ndarray
    proxy_y: np.ndarray | None
    test_x: np.ndarray
    test_y: np.ndarray
    local_test_fraction: float
    seed: int
    proxy_source: str = PROXY_SOURCE_SPLIT
    proxy_labels_for_diagnostics: np.ndarray | None = None

    @property
    def num_clients(self) -> int:
        """Number of client partitions."""
        return len(self.partitions)

    def client_data(self, partition_id: int) -> ClientData:
        """Split one client's partition into local train and test sets.

        The split is a seeded shuffle (seed ``(seed, partition_id)``), not stratified.
        With ``local_test_fraction > 0`` the test part has at least one sample and the
        train part keeps at least one sample.

        Parameters
        ----------
        partition_id : int
            Client index in ``[0, num_clients)``.

        Returns
        -------
        ClientData
            Fresh arrays (copies), safe to modify.

        Raises
        ------
        IndexError
            If ``partition_id`` is out of range.
        TypeError
            If ``partition_id`` is not an integer.
        """
        if isinstance(partition_id, bool):
            raise TypeError(f"partition_id must be an integer, got {partition_id!r}")
        pid = operator.index(partition_id)
        if not 0 <= pid < self.num_clients:
            raise IndexError(
                f"partition_id {pid} out of range: valid ids are 0..{self.num_clients - 1}"
            )
        indices = self.partitions[pid]
        return local_split(
            self.train_x[indices],
            self.train_y[indices],
            fraction=self.local_test_fraction,
            seed=self.seed,
            partition_id=pid,
        )

    def label_histograms(self) -> np.ndarray:
        """Per-client label counts over each client's full partition.

        Returns
        -------
        np.ndarray
            int64 array of shape ``(num_clients, num_classes)``.
        """
        return (
            np.stack(
                [
                    np.bincount(self.train_y[part], minlength=self.num_classes).astype(np.int64)
                    for part in self.partitions
                ]
            )
            if self.partitions
            else np.zeros((0, self.num_classes), dtype=np.int64)
        )


def local_split(
    x: np.ndarray, y: np.ndarray, *, fraction: float, seed: int, partition_id: int
) -> ClientData:
    """A client's records split into local train and test parts, seeded by
    ``(seed, partition_id)``: the split of a simulated partition, and of a deployed client's
    own data file (``fedkd.data.local_files``)."""
    rng = np.random.default_rng([seed, _LOCAL_SPLIT_STREAM, partition_id])
    order = rng.permutation(len(y))
    num_test = _local_test_count(len(y), fraction)
    test, train = order[:num_test], order[num_test:]
    return ClientData(train_x=x[train], train_y=y[train], test_x=x[test], test_y=y[test])


def _local_test_count(num_samples: int, fraction: float) -> int:
    if fraction <= 0 or num_samples == 0:
        return 0
    wanted = max(1, round(fraction * num_samples))
    return min(wanted, num_samples - 1)
