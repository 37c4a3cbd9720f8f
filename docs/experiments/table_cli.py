"""What the sweep table scripts share: the ``OUT_DIR [--plot FILE.png]`` command line and
saving the plot. Imported by its siblings run as ``python docs/experiments/<script>.py``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def parse_out_dir(doc: str) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse ``OUT_DIR [--plot FILE.png]`` (description: the first line of ``doc``).

    Returns the parser too, for its ``error``; ``args.out`` and ``args.plot`` are paths
    (``plot`` None when not given).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--plot", type=Path, default=None)
    return parser, parser.parse_args()


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure, laid out tight, at 120 dpi."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
