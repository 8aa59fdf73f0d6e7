"""torch.distributed set-up from the environment (torchrun, submitit or a test's spawn).

The launcher exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; nothing here
parses SLURM variables. NCCL on GPUs, gloo on CPU.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from semisup import launchenv
from semisup.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Dist:
    """Initialise the process group when WORLD_SIZE > 1 and pick this process' device.

    The launcher's variables are read through :mod:`semisup.launchenv` (checked, a stale one
    named). ``torch.cuda.set_device(local_rank)`` runs before anything touches CUDA, otherwise all
    processes of a node would share GPU 0.
    """
    env = launchenv.read()
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
        dev = torch.device("cuda", env.local_rank)
    else:
        dev = torch.device("cpu")
    global _control
    if env.world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=rendezvous(env), rank=env.rank,
                                world_size=env.world, device_id=dev if use_cuda else None)
        # Small decisions every process must share (stop at this step?) travel on the CPU: no device sync.
        _control = dist.new_group(backend="gloo") if use_cuda else dist.group.WORLD
    return Dist(env.rank, env.world, env.local_rank, dev)


class RendezvousError(UserError, RuntimeError):
    """The processes of a run did not all arrive."""


def rendezvous(env: launchenv.LaunchEnv) -> dist.Store:
    """The store where the run's processes meet (rank 0 serves it at MASTER_ADDR:MASTER_PORT, or
    torchrun's agent does), waiting at most ``env.rendezvous_timeout_s`` for all of them and saying
    so first; a timeout is one line (a stale WORLD_SIZE waited torch's 30 minutes in silence)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)  # torchrun's agent serves the store
    if env.rank == 0:
        print(f"waiting for the {env.world} processes of this run at {env.master_addr}:{env.master_port} (at most "
              f"{env.rendezvous_timeout_s} s)", file=sys.stderr, flush=True)
    try:
        return dist.TCPStore(env.master_addr, env.master_port, env.world, is_master=env.rank == 0 and not agent,
                             timeout=datetime.timedelta(seconds=env.rendezvous_timeout_s), wait_for_workers=True)
    except (RuntimeError, OSError, ValueError) as err:  # torch's DistStoreError is a RuntimeError
        raise RendezvousError(
            f"the {env.world} processes of this run (WORLD_SIZE) did not all meet at {env.master_addr}:"
            f"{env.master_port} within {env.rendezvous_timeout_s} s ({str(err).strip().splitlines()[0][:160]}): the "
            "others never started, or WORLD_SIZE, RANK and MASTER_ADDR are a launcher's leftovers in this shell "
            "(unset them for one process); SEMISUP_RENDEZVOUS_TIMEOUT_S waits longer"
        ) from None


_control = None  # the CPU (gloo) group for control flags, made by setup()


def all_reduce_control(flag: torch.Tensor, op=dist.ReduceOp.SUM):
    """Post a reduction (``op``) of the CPU tensor ``flag`` over all processes without waiting;
    returns the work to ``.wait()`` on (the result lands in ``flag``)."""
    return dist.all_reduce(flag, op=op, group=_control or dist.group.WORLD, async_op=True)


def cleanup() -> None:
    global _control
    if dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) to every process. DDP broadcasts them
    only before a forward, so after an epoch's last step each process holds the statistics its
    own forward moved: evaluating then would score different models on each process's shard,
    while the checkpoint holds rank 0's."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate equal-shaped tensors from all processes, keeping the gradient path to each.

    Returns (gathered [world * B, ...], offset of this process' rows)."""
    if not dist.is_initialized():
        return tensor, 0
    from torch.distributed import _functional_collectives as fc
    # Backward sums each process' gradient into the rows it contributed (a reduce-scatter).
    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd  # renamed in newer torch
    gathered = gather(tensor.contiguous(), gather_dim=0, group=dist.group.WORLD)
    return gathered, dist.get_rank() * tensor.shape[0]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate tensors of possibly different first dimension from all processes (no grad)."""
    if not dist.is_initialized():
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def process_subgroup(size: int):
    """This process' group among consecutive groups of ``size`` ranks (every rank creates all
    of them, as torch.distributed requires)."""
    if size >= dist.get_world_size():
        return dist.group.WORLD
    group, _ = dist.new_subgroups(group_size=size)
    return group


def amp_dtype(cfg, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``cfg.amp`` on ``device`` (None: full precision), shared by training and
    evaluation."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The forward passes' autocast context for ``dtype`` (:func:`amp_dtype`, computed once per run;
    None: full precision), training and evaluation alike; heatmaps and losses leave it
    (``semisup.method.cgc.float32``)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@contextlib.contextmanager
def no_cudnn_autotune():
    """cuDNN's autotuning off inside (on for training on CUDA, as released): Content Heatmap
    runs at as many sizes as the validation images have, and would time every convolution's
    algorithms again at each new one."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def uses_channels_last(cfg, device: torch.device) -> bool:
    """--channels-last applies on GPUs only (on the CPU it slows the convolutions down)."""
    return bool(cfg.channels_last) and device.type == "cuda"
