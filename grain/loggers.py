"""Per-step metric sinks for the training loops.

The loops call ``logger.log_metrics(metrics, step)`` once per optimisation step (and after each
evaluation). The MLflow logger of the pipeline implements the same protocol; the library itself
never prints.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class StepLogger(Protocol):
    """Anything that accepts a dict of floats for a step."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


class NullLogger:
    """Drops everything."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass


class ListLogger:
    """Keeps every call in memory: ``records`` is a list of ``(step, metrics)``."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.records.append((step, dict(metrics)))

    def series(self, name: str) -> list[tuple[int, float]]:
        """``(step, value)`` for every record that has metric ``name``."""
        return [(step, m[name]) for step, m in self.records if name in m]


class LoggingLogger:
    """Writes every ``every``-th step to the standard ``logging`` module (level INFO)."""

    def __init__(self, every: int = 50, name: str = "grain.steps") -> None:
        self.every = max(1, every)
        self.log = logging.getLogger(name)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step % self.every == 0 or any(k.startswith("eval/") for k in metrics):
            text = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            self.log.info("step %d %s", step, text)


class MultiLogger:
    """Forwards to several loggers."""

    def __init__(self, *loggers: StepLogger) -> None:
        self.loggers = [lg for lg in loggers if lg is not None]

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)
