"""The CUDA-only paths' defects, shown on the CPU where the CPU can show them: a resume where
fewer GPUs are visible than when the checkpoint was written; a JPEG cut mid-scan on the
``--decode gpu`` path; an autograd explainer under torch.compile; the CGC term's group sizes
without a device count; BatchNorm statistics and a non-finite loss agreed across processes
(gloo); faiss on the process's own GPU. What only a GPU shows is in ``semisup-bench gpu-check``."""
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semisup import checkpoint as ckpt
from tests.dist_utils import spawn


@pytest.mark.parametrize("visible", [0, 1, 4, 8])
def test_a_checkpoint_of_8_gpus_resumes_wherever_fewer_or_none_are_visible(monkeypatch, visible):
    saved = dict(torch=torch.get_rng_state(), cuda=[torch.full((16,), i, dtype=torch.uint8) for i in range(8)])
    restored = {}

    def set_state(state, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index or 0
        if index >= visible:
            raise IndexError(f"CUDA device {index} of {visible} visible")  # what CUDA says
        restored[index] = int(state[0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    ckpt.set_rng_state(saved)
    assert restored == {i: i for i in range(visible)}  # each visible GPU gets its own saved state, in order


def _jpeg(path, seed, size=(72, 96)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, "JPEG")
    return str(path)


def test_a_jpeg_cut_mid_scan_is_replaced_and_counted_on_the_gpu_decode_path(tmp_path):
    """The header check in the worker passes; the decoder and PIL refuse the pixels. The run goes
    on: the image is replaced by the next readable one of its batch (with its label and crop) and
    counted in ``bad``, as the CPU path counts and replaces it. Run with ``device='cpu'``: the same
    function, torchvision's CPU decoder in nvJPEG's place."""
    from semisup.data.datasets import FileSource
    from semisup.data.gpu_decode import EncodedTrainDataset, collate_encoded, decode_and_transform
    paths = [_jpeg(tmp_path / f"n0_{i}.JPEG", i) for i in range(4)]
    whole = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(whole[: int(len(whole) * 0.6)])  # cut at 60 %: inside the scan
    source = FileSource(paths, [0, 1, 2, 3])
    encoded = EncodedTrainDataset(source, np.arange(4), 32, 36, 0.5, crop=True, pair=True)
    items = [encoded[(i, 10 + i)] for i in range(4)]
    assert items[1]["encoded"] and items[1]["bad"] == 0  # the worker saw a valid header
    batch = decode_and_transform(collate_encoded(items), torch.device("cpu"), 32, 36)
    assert batch["bad"].tolist() == [0, 1, 0, 0]
    assert batch["label"].tolist() == [0, 2, 2, 3]  # file 1's place: file 2, label and crop alike
    for key in ("image", "view", "aug", "box", "flip"):
        assert torch.equal(batch[key][1], batch[key][2]), key


def test_a_decoded_image_of_another_size_than_its_header_is_unreadable(tmp_path):
    from semisup.data import gpu_decode
    from semisup.data.datasets import FileSource
    paths = [_jpeg(tmp_path / f"n0_{i}.JPEG", i) for i in range(3)]
    encoded = gpu_decode.EncodedTrainDataset(FileSource(paths, [0, 1, 2]), np.arange(3), 32, 36, 0.5, crop=True, pair=False)
    batch = gpu_decode.collate_encoded([encoded[(i, i)] for i in range(3)])
    batch["hw"][0] = torch.tensor([80, 96])  # the header said 80 rows; the decoder gives 72
    out = gpu_decode.decode_and_transform(batch, torch.device("cpu"), 32, 36)
    assert out["bad"].tolist() == [1, 0, 0] and out["label"].tolist() == [1, 1, 2]


def test_the_group_sizes_are_computed_without_counting_on_the_device():
    """The InfoNCE weights' group sizes by arithmetic (bincount and repeat_interleave with device
    repeats wait for the GPU every step): equal to counting, for groups and for replicas."""
    from semisup.method.cgc import _group_ids
    from semisup.models.replicas import replica_sizes
    for n in (1, 7, 11, 64, 128, 129):
        for group_size in (None, 1, 4, 64, 200):
            ids, sizes = _group_ids(n, group_size, "cpu")
            assert torch.equal(sizes, torch.bincount(ids)[ids]), (n, group_size)
        for replicas in (1, 2, 3, 8):
            ids, sizes = _group_ids(n, None, "cpu", replicas)
            expected = torch.repeat_interleave(torch.arange(len(replica_sizes(n, replicas))),
                                               torch.tensor(replica_sizes(n, replicas)))
            assert torch.equal(ids, expected) and torch.equal(sizes, torch.bincount(ids)[ids]), (n, replicas)


def test_faiss_searches_on_the_processs_own_gpu(monkeypatch):
    from semisup.eval.knn import gpu_index
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert gpu_index(torch.device("cuda:3")) == 3 and gpu_index(torch.device("cuda")) == 2
    assert gpu_index(torch.device("cpu")) is None and gpu_index(None) is None


@pytest.mark.slow
def test_an_autograd_explainer_declines_compile_up_front_in_one_line(tmp_path, demo_cache, monkeypatch):
    """A ViT's Grad-CAM differentiates the logits with respect to the features; out of one
    compiled graph autograd cannot relate them. The run says so at the start and trains eager:
    no compile attempted, no fallback at the first step."""
    pytest.importorskip("timm")
    from semisup.config import parse_config
    from semisup.train.trainer import run_training
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    result, trainer = run_training(parse_config([
        "--arch", "timm/test_vit", "--image-size", "32", "--resize-size", "36", "--ch-short-side", "32",
        "--labeled-fraction", "0.02", "--max-steps", "1", "--batch-labeled", "8", "--batch-unlabeled", "8",
        "--group-size", "8", "--workers", "0", "--max-eval-images", "8", "--gallery", "0", "--pretrained", "none",
        "--compile", "--device", "cpu", "--demo-cache", demo_cache, "--run-dir", str(tmp_path / "vit")]))
    log = (tmp_path / "vit" / "train.log").read_text()
    assert "torch.compile off: the gradcam explainer differentiates" in log
    assert "torch.compile failed" not in log and not trainer.forward.compiled
    assert np.isfinite(result["final"]["train_consistency"])


def _agreement_worker(rank, world, port, out_dir):
    """Rank 1 alone sees a non-finite loss; BatchNorm statistics moved differently per rank."""
    import json

    import torch.distributed as dist

    from semisup import distributed as D
    from semisup.train.reporter import Reporter
    from tests.dist_utils import set_env
    set_env(rank, world, port)
    dist.init_process_group("gloo")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    model.train()
    model(torch.randn(4, 3, 5, 5) + rank)  # each process's forward moves its own statistics
    D.broadcast_buffers(model)
    buffers = [b.clone() for b in model.buffers() if b.is_floating_point()]
    gathered = [[torch.zeros_like(b) for b in buffers] for _ in range(world)]
    for i, b in enumerate(buffers):
        dist.all_gather([g[i] for g in gathered], b)
    same = all(torch.equal(a, b) for a, b in zip(gathered[0], gathered[1]))
    reporter = Reporter.__new__(Reporter)  # only its non-finite record is used here
    reporter.first_nonfinite = torch.tensor(5 if rank == 1 else -1)
    step = reporter.nonfinite_step()
    dist.destroy_process_group()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(dict(same_buffers=same, nonfinite_step=step), f)


@pytest.mark.slow
def test_processes_agree_on_batchnorm_statistics_and_a_non_finite_step(tmp_path):
    import json
    spawn(_agreement_worker, tmp_path)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["same_buffers"] for r in results)
    assert [r["nonfinite_step"] for r in results] == [5, 5]  # rank 0 stops with rank 1, at its step
