"""The local deployment's exceptions: a failed step, and an interrupt that unwinds it."""

from __future__ import annotations

from fedkd.errors import FedKDError
from fedkd.run.interrupt import SignalInterrupt


class DeployError(FedKDError, RuntimeError):
    """The local deployment could not be set up or run; the message says which step."""


class DeployInterrupted(SignalInterrupt):
    """SIGINT or SIGTERM arrived: unwind through ``finally`` so every process is stopped.
    ``signum`` is the signal (the launcher exits with 128 + it)."""
