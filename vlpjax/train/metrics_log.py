"""Metrics to `<workdir>/metrics.jsonl` (one JSON object a line, with `step`) and TensorBoard."""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping

import numpy as np

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Appends to metrics.jsonl and TensorBoard. Where the workdir cannot be written (an archived
    run on a read-only mount evaluated again), it warns once and logs each line instead."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.tensorboard_dir = os.path.join(workdir, TENSORBOARD_DIR)
        self._writer = None
        self.writable = enabled
        if enabled:
            try:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(self.tensorboard_dir)
            except OSError as err:
                self._read_only(err)

    def _read_only(self, err: OSError) -> None:
        self.writable = False
        logger.warning("cannot write metrics in the workdir (%s); they are logged here instead", err)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        line = json.dumps({"step": int(step), **values})
        if self.writable:
            try:
                with open(self.path, "a") as f:
                    f.write(line + "\n")
                for k, v in values.items():
                    self._writer.add_scalar(k, v, int(step))
                self._writer.flush()
            except OSError as err:
                self._read_only(err)
        if not self.writable:
            logger.info("metrics %s", line)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
