"""A literal transcription of the released CGC loss (UCDvision/CGC): the per-sample reference
that the tests hold ``semisup.method.cgc`` to and that ``semisup-bench loss`` times it against.
Slow by design (S x S maps, a Python loop over the batch); not used in training."""
import torch
import torch.nn.functional as F


def pixel_boxes_and_flips(n: int, generator: torch.Generator, size: int = 224):
    """Integer-pixel crops drawn as the released dataset draws them (RandomResizedCrop on the
    224 view, scale 0.08-1), their fractional form, and flips."""
    from semisup.data.transforms import sample_crop
    pixel = [sample_crop(size, size, (0.08, 1.0), generator) for _ in range(n)]
    flips = torch.rand(n, generator=generator) < 0.5
    return pixel, torch.tensor(pixel, dtype=torch.float32) / size, flips


def released_cgc_loss(cam_aug, cam, pixel_boxes, flips, temperature=0.5, group_size=None, l2=False):
    """A literal transcription of the released loss (models/utils.py compute_gradcam_mask and
    perform_gradcam_aug, the loss of models/swav_resnet_cgc.py _forward and, with ``l2``, the
    disable_contrast branch of models/resnet_multigpu_cgc.py), one DataParallel replica per
    group, the replicas' losses averaged."""
    eps = 1e-8

    def mask(g):
        m = F.interpolate(g.unsqueeze(1), size=224, mode="bilinear", align_corners=False).squeeze(1)
        return m / (m.sum(dim=[1, 2]).unsqueeze(-1).unsqueeze(-1) + eps) + eps

    group_size = group_size or cam.shape[0]
    losses = []
    for start in range(0, cam.shape[0], group_size):
        rows = range(start, min(start + group_size, cam.shape[0]))
        orig, aug = mask(cam[start:rows.stop]), mask(cam_aug[start:rows.stop])
        transformed = []
        for k, b in enumerate(rows):
            i, j, h, w = pixel_boxes[b]
            crop = F.interpolate(
                orig[k][i : i + h, j : j + w].unsqueeze(0).unsqueeze(0), size=224, mode="bilinear", align_corners=False
            ).squeeze()
            transformed.append(crop.flip(-1) if flips[b] else crop)
        aug = aug.flatten(1) / aug.flatten(1).norm(2, dim=1, keepdim=True)
        orig_aug = torch.stack(transformed).flatten(1)
        orig_aug = orig_aug / orig_aug.norm(2, dim=1, keepdim=True)
        if l2:
            losses.append(F.mse_loss(aug, orig_aug))
            continue
        pos = (aug * orig_aug).sum(1)
        bsize = pos.shape[0]
        neg = torch.mm(aug, aug.transpose(1, 0))
        neg = neg[(1 - torch.eye(bsize)).bool()].view(-1, bsize - 1)
        out = torch.cat((pos.view(bsize, 1), neg), dim=1)
        losses.append(F.cross_entropy(out / temperature, torch.zeros(bsize, dtype=torch.long)))
    return torch.stack(losses).mean()
