"""Metrics are written by a background thread, so logging never waits on the store.

The training loop only appends to a list (microseconds); the thread sends what is pending in one ``log_batch``
at most every ``min_interval_seconds`` (or as soon as MLflow's 1000 metrics per call are pending, or on flush):
each call costs milliseconds of CPU and holds the GIL for part of it, so writing once per step would slow short
steps down. It retries when the store is busy (sqlite "database is locked" with many jobs on one file, a
tracking server restarting), so no metric is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000


class MetricWriter:
    def __init__(
        self,
        client: Any,
        run_id: str,
        min_interval_seconds: float = 2.0,
        max_attempts: int = 12,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.min_interval = min_interval_seconds
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff_seconds
        self.errors: list[str] = []  # batches given up on (after max_attempts)
        self.batches_written = 0
        self.metrics_written = 0
        self.retries = 0  # failed log_batch attempts that were retried (a busy store)
        self.cpu_seconds = 0.0  # CPU time of this thread writing (the cost tracking adds beside the loop)
        self._pending: list[Any] = []
        self._submitted = 0
        self._done = 0
        self._closed = False
        self._flushing = 0  # flush() callers waiting: write now
        self._last_write = time.monotonic()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-writer-{run_id[:8]}", daemon=True)
        self._thread.start()

    def log(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None) -> None:
        """Queue ``metrics`` at ``step``; returns at once."""
        from mlflow.entities import Metric

        ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        items = [Metric(key, float(value), ts, int(step)) for key, value in metrics.items()]
        with self._cond:
            if self._closed:
                raise RuntimeError("MetricWriter is closed")
            self._pending.extend(items)
            self._submitted += len(items)
            if len(self._pending) >= MAX_METRICS_PER_BATCH:  # else the writer wakes on its own (no GIL ping-pong)
                self._cond.notify()

    def flush(self, timeout: float | None = 120.0) -> bool:
        """Write every queued metric now and wait until done (or given up on); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._done < target:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float | None = 120.0) -> bool:
        ok = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        return ok

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    since = time.monotonic() - self._last_write
                    if self._pending and (self._closed or self._flushing or since >= self.min_interval
                                          or len(self._pending) >= MAX_METRICS_PER_BATCH):
                        break
                    if self._closed and not self._pending:
                        return
                    # Poll at the write interval: log() does not wake this thread for every step.
                    self._cond.wait(max(0.01, self.min_interval - since) if self._pending else self.min_interval)
                batch = self._pending[:MAX_METRICS_PER_BATCH]
                del self._pending[:MAX_METRICS_PER_BATCH]
            self._write(batch)
            with self._cond:
                self._last_write = time.monotonic()
                self._done += len(batch)
                self._cond.notify_all()

    def _write(self, batch: list[Any]) -> None:
        start = time.thread_time()
        try:
            self._write_with_retries(batch)
        finally:
            self.cpu_seconds += time.thread_time() - start

    def _write_with_retries(self, batch: list[Any]) -> None:
        delay = 0.05
        for attempt in range(1, self.max_attempts + 1):
            try:
                self.client.log_batch(self.run_id, metrics=batch, synchronous=True)
                self.batches_written += 1
                self.metrics_written += len(batch)
                return
            except Exception as e:  # a busy store: retry with backoff
                if attempt == self.max_attempts:
                    msg = f"dropped {len(batch)} metrics of run {self.run_id} after {attempt} attempts: {e}"
                    log.error(msg)
                    self.errors.append(msg)
                    return
                self.retries += 1
                log.debug("log_batch attempt %d failed (%s); retrying in %.2fs", attempt, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
