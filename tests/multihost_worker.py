"""One process of the multi-host test: its own rows in, the global softmax loss out (JSON)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vlpjax.objectives.contrastive import softmax_loss  # noqa: E402
from vlpjax.parallel import global_to_host_local, host_local_to_global, make_mesh, over_batch_axes  # noqa: E402
from vlpjax.parallel.distributed import initialize  # noqa: E402

ROWS_PER_PROCESS, DIM = 4, 6


def global_embeddings(num_processes: int):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(ROWS_PER_PROCESS * num_processes, DIM)).astype(np.float32)
    txt = rng.normal(size=img.shape).astype(np.float32)
    return img / np.linalg.norm(img, axis=1, keepdims=True), txt / np.linalg.norm(txt, axis=1, keepdims=True)


def main(port: str, num_processes: str, process_id: str) -> None:
    n, pid = int(num_processes), int(process_id)
    initialize(f"127.0.0.1:{port}", n, pid)
    img, txt = global_embeddings(n)
    rows = slice(pid * ROWS_PER_PROCESS, (pid + 1) * ROWS_PER_PROCESS)
    mesh = make_mesh(data=-1)
    batch = host_local_to_global({"img": img[rows], "txt": txt[rows]}, mesh)
    loss_fn = over_batch_axes(softmax_loss, mesh, num_batched=2)
    loss, grads = jax.jit(jax.value_and_grad(lambda i, t: loss_fn(i, t, jnp.float32(5.0))[0], argnums=(0, 1)))(
        batch["img"], batch["txt"]
    )
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "devices": jax.device_count(),
                "local_devices": jax.local_device_count(),
                "loss": float(loss),
                "img_grad_rows": global_to_host_local(grads[0]).tolist(),
            }
        )
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
