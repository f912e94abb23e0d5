"""Quantizing across processes with torch.distributed, as launched by ``torchrun``.

One process per rank (gloo on CPU, NCCL on GPUs; multi-node through torchrun's rendezvous). For each
decoder layer every rank runs its share of the calibration batches through the layer, the Hessians
are summed over ranks exactly (integer grid, vq2trt.algo.hessian), the layer's Linears are split
between ranks by cost, each rank quantizes its own and all ranks exchange the results, so every rank
holds the same quantized layer for the next one. Rank 0 writes the resumable per-layer files and the
checkpoint. Because every sum is exact and every Linear is quantized from the same H with the same
seed, the checkpoint has the same bytes as a single-process run with the same threads per process.

Without torchrun (no WORLD_SIZE in the environment) ``Dist.from_env()`` is a single-process stand-in
whose collectives return their input, so quantize() has one code path.
"""

from __future__ import annotations

import datetime
import os

import torch


class DistError(RuntimeError):
    """A distributed run that cannot start; the message says what is wrong with the launch."""


class Dist:
    """rank/world of this process and the few collectives quantize() needs."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")   # where NCCL wants its tensors

    @classmethod
    def from_env(cls, device: str | torch.device | None = None) -> Dist:
        """The process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR...),
        initialised once; a plain single process when WORLD_SIZE is unset or 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        dev = torch.device(device) if device else torch.device("cpu")
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                dev = torch.device("cuda", local)
            # A rank may wait long for another (rank 0 quantizes the head or distils alone).
            minutes = float(os.environ.get("VQ2TRT_DIST_TIMEOUT_MIN", "180"))
            try:
                dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
            except (RuntimeError, ValueError) as e:
                raise DistError(f"cannot join the torchrun process group ({backend}, WORLD_SIZE={world}, "
                                f"RANK={os.environ.get('RANK')}): {e}") from e
        return cls(dist.get_rank(), dist.get_world_size(), dev)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def own_batches(self, n: int) -> list[int]:
        """Calibration batches this rank runs: every world-th, starting at its rank."""
        return list(range(self.rank, n, self.world))

    def assign(self, costs: list[float]) -> list[int]:
        """Rank of each job: longest first onto the least loaded rank (ties: lower index, lower
        rank), so every rank computes the same assignment."""
        load = [0.0] * self.world
        owner = [0] * len(costs)
        for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
            r = min(range(self.world), key=lambda r: (load[r], r))
            owner[j], load[r] = r, load[r] + costs[j]
        return owner

    # Collectives: identity when there is one process.

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return t
        import torch.distributed as dist

        buf = t.to(self.device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device)

    def all_gather_sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        return [sum(col) for col in zip(*self.all_gather_object(values))]

    def all_gather_lists(self, values: list) -> list:
        if not self.active:
            return values
        return [v for part in self.all_gather_object(values) for v in part]

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def gather_batches(dist: Dist, batches, n_batches: int):
    """Every batch on rank 0 (the head stage needs them all); other ranks keep what they have."""
    if not dist.active or len(batches) == n_batches:
        return batches
    from vq2trt.activations import Activations

    mine = {b: k for k, b in enumerate(batches.ids)}
    out = Activations([{}] * n_batches, list(range(n_batches)), batches.folder, batches.device)
    owners = [b % dist.world for b in range(n_batches)]
    for b in range(n_batches):
        t = dist.broadcast_object(batches.hidden(mine[b]).cpu() if owners[b] == dist.rank else None, src=owners[b])
        if dist.is_main:
            out.put(b, t.to(batches.device or "cpu"))
    return out if dist.is_main else batches
