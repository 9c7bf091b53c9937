"""Data-parallel training with torch.distributed (DDP): gloo on CPU, NCCL on GPUs.

A run is distributed when the process was started by torchrun (``WORLD_SIZE`` > 1 in its
environment): ``lava-allnet train --nproc N`` starts N such processes on this machine through
torch's elastic launcher, and ``torchrun --nnodes M --nproc-per-node N -m lava_allnet train ...``
does the same across machines. What the ranks share:

- **The batch.** ``schedule.batch_size`` is the global batch. Every rank draws the same seeded
  permutation and augmentation for it, and takes its slice ``[rank::world]``: a disjoint shard of
  each epoch (DistributedSampler's rule at batch level), and the same images, augmented the same
  way, as a single process would see. The position (epoch, batch) does not depend on the number of
  ranks, so a run resumes with the same world size or another one.
- **The batch-norm means.** SLAYER's mean-only batch norm becomes the deployed neurons' biases, so
  its means are the global batch's: per-channel sums and counts are all-reduced in the forward pass
  and the gradient's totals in the backward pass (``lava_allnet.model.synced_batch_norm``).
- **The gradients.** DDP averages them; each rank's loss is scaled by its share of the global batch,
  so the average is the gradient of the global batch's mean loss.
- **The writes.** Rank 0 alone writes the run directory (config, split, checkpoints, metrics, the
  teacher, exports) and shows progress; the others wait at a barrier where they need its files.
  Several machines need the run directory and the data on a shared file system.

A rank that dies (killed, out of memory, an error on its shard) stops the run: the launcher ends the
other ranks and ``train --nproc`` names the rank and the cause in one line. Checkpoints are written
atomically by rank 0, so the last one stays intact and ``train --resume`` continues from it.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch

from lava_allnet.errors import AllnetError
from training.checkpoint import save_json

# how long a rank waits for the others at a collective (the teacher, trained by rank 0 alone, is
# the longest wait); the launcher ends the run sooner when a rank dies
TIMEOUT_S = float(os.environ.get("LAVA_ALLNET_DDP_TIMEOUT_S", "3600"))
# what a rank records when another rank died under it (gloo, NCCL): a consequence, not the cause
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "remote process exited",
             "communicator was aborted")
LAUNCHER_ENV = "LAVA_ALLNET_NPROC"  # set for the ranks that `train --nproc` starts


@dataclass
class Context:
    """This process's place in a distributed run."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    backend: str
    group: object  # a second process group for the batch-norm sums (apart from DDP's gradient buckets)
    weight: float = 1.0  # 0 for a rank whose slice of a short last batch is empty (it runs a stand-in)

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (times this rank's weight) summed over the ranks."""
        import torch.distributed as dist

        out = t * self.weight
        dist.all_reduce(out, group=self.group)
        return out


_CTX: Context | None = None


def launched() -> bool:
    """This process is one rank of a torchrun / ``--nproc`` run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> Context | None:
    """Join the process group that torchrun's environment describes (None when not distributed)."""
    global _CTX
    if _CTX is not None or not launched():
        return _CTX
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise AllnetError(f"--device {device}: torch sees no CUDA GPU on this machine")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    except Exception as exc:  # rendezvous refused, address in use, a peer gone
        raise AllnetError(f"cannot join the distributed run ({type(exc).__name__}: {exc})") from exc
    _CTX = Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("LOCAL_WORLD_SIZE", "1")), backend, dist.new_group(backend=backend))
    return _CTX


def shutdown(sync: bool = False) -> None:
    """Leave the process group. ``sync`` (the run ended normally on every rank): first free what
    still holds the groups (DDP's reducer) and wait for every rank, so that no rank tears gloo down
    under a peer's last collective (which aborts that peer: "terminate called without an active
    exception", seen under load). After a failure the peers may be gone, so there is no barrier."""
    global _CTX
    if _CTX is not None:
        import gc

        import torch.distributed as dist

        gc.collect()
        if sync:
            dist.barrier()
        dist.destroy_process_group()
        _CTX = None


def get() -> Context | None:
    return _CTX


def rank() -> int:
    return _CTX.rank if _CTX else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _CTX is not None:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (writing what it writes); the others run it after, reading that."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def device_for(name: str) -> str:
    """A rank's device: ``cuda`` means the GPU of its local rank."""
    if _CTX is not None and name == "cuda":
        return f"cuda:{_CTX.local_rank}"
    return name


def threads_for(threads: int) -> int:
    """A rank's share of ``schedule.threads`` (the threads of the run on one machine)."""
    if _CTX is None or threads <= 0:
        return threads
    return max(1, threads // _CTX.local_world)


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over the ranks (float64; the values themselves without a distributed run)."""
    if _CTX is None:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if _CTX.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def record_failure(exc: BaseException) -> None:
    """Leave this rank's error where torch's launcher reads it (``TORCHELASTIC_ERROR_FILE``), so the
    launching command can name the cause and not only the exit code. Written whole or not at all
    (``checkpoint.save_json``): the launcher reads it as soon as any rank fails, and a half-written
    file makes it raise instead of report."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    with contextlib.suppress(OSError):
        save_json({"message": f"{type(exc).__name__}: {exc}", "timestamp": int(time.time())}, path)


def failure_line(exc: Exception) -> str:
    """One line for a ``ChildFailedError``: the rank that failed first, and why. The launcher stops the
    other ranks with SIGTERM, and a rank whose peer died records a lost connection, so: a recorded
    error first, then another signal (SIGKILL: killed, or out of memory), an exit code, a lost peer,
    and SIGTERM last."""
    import signal

    failures = getattr(exc, "failures", None) or {}
    if not failures:
        return f"distributed training failed: {exc}"

    def order(item):
        rank_, f = item
        recorded = f.error_file_data.get("message") not in (None, "", "<NONE>")  # torch's mark for no file
        if recorded:
            kind = 3 if any(m in str(f.message) for m in PEER_LOST) else 0
        else:
            kind = 1 if 0 > f.exitcode != -signal.SIGTERM else 2 if f.exitcode > 0 else 4
        return kind, f.timestamp, rank_

    rank_, failure = min(failures.items(), key=order)
    if order((rank_, failure))[0] in (0, 3):
        cause = str(failure.message)
    elif failure.exitcode < 0:
        cause = f"killed by {failure.signal_name()}"
    else:
        cause = f"exit code {failure.exitcode}"
    others = sorted(r for r in failures if r != rank_)
    stopped = f"; rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} stopped" if others else ""
    return f"training rank {rank_} failed: {cause}{stopped}. The last checkpoint is intact: continue with --resume"


def launch(nproc: int, args: list[str]) -> None:
    """Run ``lava-allnet train ARGS`` as ``nproc`` ranks on this machine (torchrun --standalone)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if launched():
        raise AllnetError("--nproc starts its own ranks: under torchrun, leave it out")
    # each rank's share of the cores unless the caller chose (schedule.threads divides likewise)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHER_ENV] = str(nproc)
    import logging

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the failure is reported below
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "lava_allnet", "train", *args)
    except ChildFailedError as exc:
        raise AllnetError(failure_line(exc)) from None


__all__ = ["Context", "init", "shutdown", "get", "rank", "is_main", "barrier", "main_first",
           "device_for", "threads_for", "all_sum", "record_failure", "failure_line", "launch", "launched"]
