"""The last mile of fidelity: the released flip draw, BatchNorm over DataParallel replicas, the
partial last batch, and the exact decode."""
import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from semisup.data import transforms as T
from semisup.method import cgc
from semisup.models.base import build_model
from semisup.models.replicas import ReplicaBatchNorm2d, replica_mean, replica_sizes, use_replica_batchnorm
from semisup.tools.reference import pixel_boxes_and_flips, released_cgc_loss


def released_flip_transcription(uniform, coin) -> tuple[bool, bool]:
    """datasets/imagefolder_cgc_ssl.py, lines 161-164, with its two random sources as arguments:
    ``if random.random() > 0.5: aug_sample = self.hor_flip(aug_sample); hor_flip = True``, where
    ``RandomHorizontalFlip`` mirrors when ``torch.rand(1) < 0.5``. Returns (hor_flip, mirrored)."""
    hor_flip, mirrored = False, False
    if uniform() > 0.5:
        mirrored = bool(coin() < 0.5)
        hor_flip = True
    return hor_flip, mirrored


def test_released_flip_protocol_draws_the_flag_and_the_mirror_as_the_released_dataset():
    import torchvision.transforms as TV
    # The released code itself, with its own libraries' generators: how often the flag is set and
    # the image really mirrored.
    random.seed(0)
    torch.manual_seed(0)
    image = torch.arange(12.0).view(1, 3, 4)
    flip = TV.RandomHorizontalFlip()
    released = []
    for _ in range(4000):
        flag = False
        out = image
        if random.random() > 0.5:
            out = flip(image)
            flag = True
        released.append((flag, bool((out != image).any())))
    ours = []
    for seed in range(4000):
        g = torch.Generator().manual_seed(seed)
        params, flag = T.draw_pair(16, (0.08, 1.0), g, "released")
        ours.append((bool(flag), bool(params[4])))
    for draws in (released, ours):
        counts = {k: sum(d == k for d in draws) / len(draws) for k in [(False, False), (True, False), (True, True), (False, True)]}
        assert counts[(False, True)] == 0  # never mirrored without the flag
        assert abs(counts[(False, False)] - 0.5) < 0.03 and abs(counts[(True, False)] - 0.25) < 0.03 and abs(counts[(True, True)] - 0.25) < 0.03
    # Per sample: ours is the transcription, drawn from the per-sample generator in the released order.
    for seed in range(200):
        g, h = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        params, flag = T.draw_pair(32, (0.08, 1.0), g, "released")
        crop = T.sample_crop(32, 32, (0.08, 1.0), h)
        expected = released_flip_transcription(lambda: torch.rand(1, generator=h).item(), lambda: torch.rand(1, generator=h).item())
        assert params[:4] == crop and (flag, params[4]) == expected
        # The loss mirrors by the flag; the augmented image is mirrored by the coin.
        view = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
        aug, _, loss_flip = T.cgc_pair(view, (0.08, 1.0), torch.Generator().manual_seed(seed), "released")
        unmirrored = T.apply_crop_flip(view, (*params[:4], False), 32)
        assert bool(loss_flip) == flag
        assert torch.equal(aug, unmirrored.flip(-1) if params[4] else unmirrored)


def test_consistent_flip_protocol_mirrors_exactly_the_flagged_pairs_and_keeps_the_earlier_draws():
    for seed in range(300):
        params, flag = T.draw_pair(32, (0.08, 1.0), torch.Generator().manual_seed(seed), "consistent")
        assert flag == params[4]
        # The same numbers as the earlier single-coin draw (results made with it stay comparable).
        assert params == T.draw_crop_flip(32, 32, (0.08, 1.0), torch.Generator().manual_seed(seed))


def test_replica_sizes_are_torch_chunk():
    for n in (1, 2, 11, 64, 127, 128, 143):
        for r in (1, 2, 4):
            assert replica_sizes(n, r) == [len(c) for c in torch.arange(n).chunk(r)]


def _reference_replicas(model, x, replicas):
    """DataParallel's forward: piece k through replica k; replica 0 is the model itself (its
    BatchNorm updates are kept), the others share its parameters but not its buffers."""
    outputs = []
    for k, piece in enumerate(x.chunk(replicas)):
        if k == 0:
            outputs.append(model(piece)[0])
        else:
            state = {**dict(model.named_parameters()), **{n: b.clone() for n, b in model.named_buffers()}}
            outputs.append(torch.func.functional_call(model, state, (piece,))[0])
    return outputs


@pytest.mark.parametrize("batch", [24, 11])  # full, and the partial last batch (6 + 5)
def test_replica_batchnorm_equals_a_replica_per_piece_in_outputs_gradients_and_running_statistics(batch):
    torch.manual_seed(0)
    ours = build_model("resnet_tiny", 5).double()  # float64: equal to rounding, not to float32's kernel-order noise
    reference = copy.deepcopy(ours)
    use_replica_batchnorm(ours, 2)
    assert all(type(m) is ReplicaBatchNorm2d for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d))
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(batch, 3, 16, 16, generator=g, dtype=torch.float64)
        y = torch.randint(0, 5, (batch,), generator=g)
        logits = ours(x)[0]
        loss_a = replica_mean(F.cross_entropy(logits, y, reduction="none"), 2)
        pieces = _reference_replicas(reference, x, 2)
        loss_b = torch.stack([F.cross_entropy(p, t) for p, t in zip(pieces, y.chunk(2))]).mean()  # xe_loss.mean() over replicas
        torch.testing.assert_close(logits, torch.cat(pieces), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-12, atol=1e-14)
        opt_a.zero_grad(), opt_b.zero_grad()
        loss_a.backward(), loss_b.backward()
        for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)
        opt_a.step(), opt_b.step()
    for (name, a), b in zip(ours.named_buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)  # running statistics as replica 0 kept them
    ours.eval(), reference.eval()
    x = torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], reference(x)[0], rtol=1e-10, atol=1e-12)


def test_the_step_on_a_partial_batch_weighs_replicas_as_the_released_run(tmp_path):
    """11 labeled images at batch 128 in replicas of 64: CE is the mean of the 6- and 5-image
    replicas' means, each normalised on its own (cross-entropy run, one step of SGD)."""
    from semisup.config import make_config
    from semisup.data.datasets import DataBundle, EvalSet
    from semisup.distributed import Dist
    from semisup.train.trainer import Trainer
    cfg = make_config(dict(data="x", arch="resnet_tiny", image_size=16, batch_labeled=128, cgc_weight=0.0, ce_baseline="plain",
                           lr_trunk=0.1, lr_head=0.1, device="cpu"))
    bundle = DataBundle([str(i) for i in range(5)], None, np.arange(128), None, None, EvalSet(None, None), {})
    trainer = Trainer(cfg, Dist(), None, bundle)
    assert trainer.geometry.local == 2
    reference = build_model("resnet_tiny", 5)
    reference.load_state_dict(trainer.model.state_dict())
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (11, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (11,), generator=g)
    trainer.model.train()
    losses = trainer.training_step(dict(image=images, label=labels), None)
    pieces = _reference_replicas(reference, T.normalize(images), 2)
    expected = (F.cross_entropy(pieces[0], labels[:6]) + F.cross_entropy(pieces[1], labels[6:])) / 2
    torch.testing.assert_close(losses.ce, expected.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, F.cross_entropy(torch.cat(pieces), labels))  # the weighting matters here
    # The same weighting for the InfoNCE groups: 6 + 5 anchors, each group its own negatives.
    g = torch.Generator().manual_seed(2)
    cam, cam_aug = torch.rand(11, 7, 7, generator=g), torch.rand(11, 7, 7, generator=g)
    pixel, boxes, flips = pixel_boxes_and_flips(11, g)
    ours = cgc.cgc_loss(cam_aug, cam, boxes, flips, replicas=2)
    two_replicas = released_cgc_loss(cam_aug, cam, pixel, flips.tolist(), group_size=6)  # pieces 0:6 and 6:11, averaged
    torch.testing.assert_close(ours, two_replicas, rtol=1e-5, atol=1e-6)


def big_jpeg(path: Path, size=(1280, 854), seed=0) -> Path:
    from sklearn.datasets import load_sample_images
    photo = load_sample_images().images[seed % 2]
    Image.fromarray(photo).resize(size, Image.BICUBIC).save(path, quality=90)
    return path


def test_default_decode_equals_pils_full_decode_and_the_draft_is_opt_in(tmp_path):
    from semisup.data.datasets import FileSource, TrainDataset
    paths = [str(big_jpeg(tmp_path / f"{i}.JPEG", size, i)) for i, size in enumerate([(1280, 854), (640, 1000), (600, 600)])]
    source = FileSource(paths, [0] * len(paths))
    exact = TrainDataset(source, np.arange(len(paths)), 224, 256, 0.08, crop=False, pair=True)
    draft = TrainDataset(source, np.arange(len(paths)), 224, 256, 0.08, crop=False, pair=True, draft=True)
    differs = 0
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            pil = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        assert torch.equal(source.load(i), pil)  # bit for bit: libjpeg-turbo through torchvision = PIL
        assert torch.equal(exact[(i, 7)]["view"], T.center_view(pil, 256, 224))
        differs += not torch.equal(draft[(i, 7)]["view"], exact[(i, 7)]["view"])
    assert differs >= 2  # the two files at least twice the view: decoded at a reduced scale only when asked for


@pytest.mark.parametrize("consistency", ["cgc", "l2"])
def test_the_runs_consistency_term_is_built_for_its_replicas(consistency):
    """The term the config names, built once for the run (``train/consistency.py``): on the 11
    images of a partial batch in replicas of 64, InfoNCE's groups and L2's weighting are the
    released replicas' (6 + 5), not one group over the batch."""
    from semisup.config import make_config
    from semisup.data.bundle import DataBundle, EvalSet
    from semisup.distributed import Dist
    from semisup.train.trainer import Trainer
    cfg = make_config(dict(data="x", arch="resnet_tiny", image_size=16, batch_labeled=128, batch_unlabeled=128,
                           consistency=consistency, device="cpu"))
    bundle = DataBundle([str(i) for i in range(5)], None, np.arange(128), None, None, EvalSet(None, None), {})
    term = Trainer(cfg, Dist(), None, bundle).consistency
    g = torch.Generator().manual_seed(3)
    cam, cam_aug = torch.rand(11, 7, 7, generator=g), torch.rand(11, 7, 7, generator=g)
    pixel, boxes, flips = pixel_boxes_and_flips(11, g)
    if consistency == "cgc":
        assert term.negatives_per_anchor(128) == 63 and term.negatives_per_anchor(11, fewest=True) == 4
        expected = released_cgc_loss(cam_aug, cam, pixel, flips.tolist(), group_size=6, temperature=cfg.temperature)
        one_group = cgc.cgc_loss(cam_aug, cam, boxes, flips, cfg.temperature, cfg.cam_size)
    else:
        assert term.negatives_per_anchor(128) is None
        per_sample = cgc.gcc_l2_per_sample(cam_aug, cam, boxes, flips, cfg.cam_size)
        expected, one_group = (per_sample[:6].mean() + per_sample[6:].mean()) / 2, per_sample.mean()
    value = term(cam_aug, cam, boxes, flips)
    torch.testing.assert_close(value, expected.float(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(value, one_group.float(), rtol=1e-4, atol=0)  # the replicas matter here
