"""Log-log ROC curves of membership-inference attack results, saved as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.privacy.audit_metrics import AttackResult


def plot_roc(results: Sequence[AttackResult], path: str | Path) -> Path:
    """Save log-log ROC curves, one line per (target, attack), to the PNG ``path``.

    The log-log axes are the presentation of Carlini et al. (2022): they show the low-FPR
    regime where an attack identifies members confidently. The legend gives each AUC; the
    dashed diagonal is a chance-level attack. Uses :class:`matplotlib.figure.Figure` with
    the Agg canvas, so no global pyplot state is touched. Parent folders are created.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``results`` is empty.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_roc needs at least one AttackResult")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Lower limit: below the smallest non-zero FPR any curve can reach.
    lowest = min(1e-3, 0.5 / max(max(r.non_members for r in results), 1))
    fig = Figure(figsize=(5.0, 5.0))
    FigureCanvasAgg(fig)
    ax: Any = fig.add_subplot(1, 1, 1)
    ax.plot([lowest, 1.0], [lowest, 1.0], linestyle="--", color="grey", label="chance")
    for result in results:
        fpr = np.clip(np.asarray(result.fpr, dtype=float), lowest, 1.0)
        tpr = np.clip(np.asarray(result.tpr, dtype=float), lowest, 1.0)
        ax.plot(fpr, tpr, label=f"{result.target} / {result.attack} (AUC {result.auc:.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lowest, 1.0)
    ax.set_ylim(lowest, 1.0)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("Membership inference ROC")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=100)
    return out
