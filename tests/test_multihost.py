"""Two local processes joined by jax.distributed (gloo on 127.0.0.1) compute the global loss."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from tests.multihost_worker import ROWS_PER_PROCESS, global_embeddings
from vlpjax.objectives.contrastive import softmax_loss

PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_the_single_device_loss_and_gradient():
    port = str(_free_port())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.multihost_worker", port, str(PROCESSES), str(i)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    img, txt = global_embeddings(PROCESSES)
    ref_loss, ref_grad = jax.value_and_grad(lambda i: softmax_loss(i, jnp.asarray(txt), jnp.float32(5.0))[0])(
        jnp.asarray(img)
    )
    for r in sorted(results, key=lambda r: r["process"]):
        assert r["devices"] == 2 * PROCESSES and r["local_devices"] == 2
        np.testing.assert_allclose(r["loss"], float(ref_loss), rtol=1e-5)
        rows = slice(r["process"] * ROWS_PER_PROCESS, (r["process"] + 1) * ROWS_PER_PROCESS)
        np.testing.assert_allclose(np.array(r["img_grad_rows"]), np.asarray(ref_grad)[rows], rtol=1e-5, atol=1e-7)
