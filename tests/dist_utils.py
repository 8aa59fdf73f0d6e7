"""Helpers that run functions in 2 gloo processes (spawned; importable by the children)."""
import os
import socket

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_env(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _train_worker(rank, world, port, args, out_dir):
    from semisup.config import parse_config
    from semisup.train.trainer import run_training
    set_env(rank, world, port)
    result, trainer = run_training(parse_config(args))
    torch.save(dict(params={k: v for k, v in trainer.model.named_parameters()}, result=result), f"{out_dir}/rank{rank}.pt")


def failing_backend(graph_module, example_inputs):
    """A torch.compile backend that cannot compile, as on a node without a working compiler."""
    raise RuntimeError("no compiler on this node (test backend)")


def failing_backward_backend():
    """A backend whose forward runs (BatchNorm statistics move, DDP prepares its reducer) and whose
    backward fails to compile at the first backward, as Inductor's lazily compiled backward can."""
    from torch._dynamo.backends.common import aot_autograd

    def backward(graph_module, example_inputs):
        raise RuntimeError("the backward does not compile on this node (test backend)")
    return aot_autograd(fw_compiler=lambda graph_module, example_inputs: graph_module, bw_compiler=backward)


def compile_backend(name: str):
    """torch.compile's backend for a test: 'failing', 'failing-backward' or a registered name ('aot_eager')."""
    return {"failing": failing_backend, "failing-backward": failing_backward_backend()}.get(name, name)


def _compiled_train_worker(rank, world, port, args, out_dir, backend):
    """_train_worker with torch.compile's backend replaced: 'aot_eager' (Dynamo's trace of the DDP
    module and AOT autograd, without Inductor's code generation, minutes on 2 cores) or one of the
    failing ones of compile_backend."""
    import functools
    torch.compile = functools.partial(torch.compile, backend=compile_backend(backend))
    _train_worker(rank, world, port, args, out_dir)


def _loss_worker(rank, world, port, out_dir):
    """Each process holds 4 of 8 rows; the loss with groups of 4 (inside a process) and of 8
    (spanning both, negatives gathered with gradient), and its gradients."""
    import torch.distributed as dist

    from semisup import distributed as D
    from semisup.method import cgc
    set_env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cam, cam_aug, boxes, flips, _ = loss_inputs()
    rows = slice(rank * 4, rank * 4 + 4)
    out = {}
    for group in (4, 8):
        local_cam = cam[rows].clone().requires_grad_()
        local_aug = cam_aug[rows].clone().requires_grad_()
        if group == 8:
            all_aug, offset = D.gather_with_grad(local_aug)
            loss = cgc.cgc_loss(local_aug, local_cam, boxes[rows], flips[rows], group_size=group, all_cam_aug=all_aug, offset=offset)
        else:
            loss = cgc.cgc_loss(local_aug, local_cam, boxes[rows], flips[rows], group_size=group)
        loss.backward()
        out[group] = dict(loss=loss.detach(), cam_grad=local_cam.grad, aug_grad=local_aug.grad)
    torch.save(out, f"{out_dir}/loss{rank}.pt")
    dist.destroy_process_group()


def loss_inputs():
    """8 relu'd 7 x 7 heatmaps per view and integer-pixel boxes (224 view), as in training."""
    from semisup.tools.reference import pixel_boxes_and_flips
    g = torch.Generator().manual_seed(0)
    cam, cam_aug = (torch.rand(8, 7, 7, generator=g) - 0.2).relu(), (torch.rand(8, 7, 7, generator=g) - 0.2).relu()
    pixel, boxes, flips = pixel_boxes_and_flips(8, g)
    return cam, cam_aug, boxes, flips, pixel


def spawn(fn, *args, world: int = 2) -> None:
    mp.spawn(fn, args=(world, free_port(), *args), nprocs=world, join=True)
