"""Grad-CAM, the heatmap transform and the CGC / GCC losses."""
import pytest
import torch
import torch.nn.functional as F

from semisup import cgc
from semisup.models import build_model


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    h = 0.2 + 0.8 * torch.rand(n, generator=generator)
    w = 0.2 + 0.8 * torch.rand(n, generator=generator)
    top = (1 - h) * torch.rand(n, generator=generator)
    left = (1 - w) * torch.rand(n, generator=generator)
    return torch.stack([top, left, h, w], 1)


@pytest.mark.parametrize("train_mode", [False, True])
def test_closed_form_cam_equals_autograd_gradcam_on_torchvision_resnet(train_mode):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=7).train(train_mode)
    x = torch.randn(3, 3, 96, 96)
    logits, features = model(x)
    classes = torch.tensor([0, 3, 6])
    autograd_cam = cgc.gradcam(logits, features, classes)
    closed = model.cam(logits, features, classes)
    pooled = cgc.gradcam_pooled(logits, features, classes)
    assert autograd_cam.shape == (3, 3, 3)
    assert autograd_cam.max() > 0  # not a vacuous comparison of zero maps
    torch.testing.assert_close(closed, autograd_cam, rtol=1e-4, atol=1e-7)
    # For a GAP + linear head the pooled (standard) Grad-CAM is the same map.
    torch.testing.assert_close(pooled, autograd_cam, rtol=1e-4, atol=1e-7)


def test_gradcam_is_differentiable_into_the_backbone():
    torch.manual_seed(0)
    model = build_model("resnet_tiny", num_classes=5)
    logits, features = model(torch.randn(2, 3, 64, 64))
    cam = cgc.gradcam(logits, features, logits.argmax(1).detach())
    cam.sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_batch_heatmaps_equal_image_by_image():
    torch.manual_seed(0)
    model = build_model("resnet_tiny", num_classes=5).eval()
    x = torch.randn(4, 3, 64, 64)
    classes = torch.tensor([1, 0, 4, 2])
    logits, features = model(x)
    batched = cgc.gradcam(logits, features, classes)
    for i in range(4):
        li, fi = model(x[i:i + 1])
        torch.testing.assert_close(batched[i], cgc.gradcam(li, fi, classes[i:i + 1])[0], rtol=1e-4, atol=1e-6)
    # In train mode BatchNorm couples the features of a batch, but the Grad-CAM op itself
    # must not: each heatmap depends only on its own sample's logits and features.
    model.train()
    logits, features = model(x)
    batched = cgc.gradcam(logits, features, classes)
    for i in range(4):
        features_i = features[i:i + 1].detach().requires_grad_()
        logits_i = model.head(features_i)
        torch.testing.assert_close(batched[i], cgc.gradcam(logits_i, features_i, classes[i:i + 1])[0], rtol=1e-5, atol=1e-7)


def loop_transform(cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample reference: integer-pixel crop, bilinear resize, mirror."""
    out = []
    H, W = cam.shape[-2:]
    for m, (t, l, h, w), f in zip(cam, boxes.tolist(), flips.tolist()):
        top, left = round(t * H), round(l * W)
        crop = m[top:top + round(h * H), left:left + round(w * W)]
        crop = F.interpolate(crop[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


def test_transform_cam_matches_per_sample_crop_resize_flip():
    g = torch.Generator().manual_seed(0)
    S = 224
    # Smooth maps, like upsampled heatmaps: a random 7x7 map upsampled to S.
    cam = F.interpolate(torch.rand(6, 1, 7, 7, generator=g), size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    # Integer-pixel boxes: flipped, unflipped, the full view, a near-full box touching the border.
    pixel_boxes = torch.tensor([[10, 20, 100, 150], [0, 0, 224, 224], [0, 0, 224, 224], [1, 0, 223, 224], [60, 100, 64, 124], [120, 3, 104, 221]])
    boxes = pixel_boxes.float() / S
    flips = torch.tensor([True, False, True, False, True, True])
    ours = cgc.transform_cam(cam, boxes, flips, S)
    reference = loop_transform(cam, boxes, flips, S)
    assert ours.shape == (6, S, S)
    # The full unflipped box is the identity, exactly.
    torch.testing.assert_close(ours[1], cam[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[2], cam[2].flip(-1), rtol=0, atol=1e-6)
    # Elsewhere equal up to interpolation at the crop's edges.
    rel = (ours - reference).abs().amax((1, 2)) / cam.amax((1, 2))
    assert rel.max() < 0.02, rel


def test_fast_cgc_loss_equals_dense_loss_value_and_gradients():
    g = torch.Generator().manual_seed(1)
    B = 12
    cam = torch.rand(B, 7, 7, generator=g).requires_grad_()
    cam_aug = torch.rand(B, 7, 7, generator=g).requires_grad_()
    cam.data[0] = 0  # an all-zero heatmap must not produce NaN
    boxes = random_boxes(B, g)
    boxes[1] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    flips = torch.rand(B, generator=g) < 0.5
    fast = cgc.cgc_loss(cam_aug, cam, boxes, flips, temperature=0.5)
    dense = cgc.cgc_loss_dense(cam_aug, cam, boxes, flips, temperature=0.5)
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-6)
    grads_fast = torch.autograd.grad(fast, [cam, cam_aug])
    grads_dense = torch.autograd.grad(dense, [cam, cam_aug])
    for a, b in zip(grads_fast, grads_dense):
        assert torch.isfinite(a).all()
    # Row 0 of cam is all zero: the cosine has no gradient there (the dense path's is 1e23
    # noise from its epsilon); everywhere else both must agree.
    torch.testing.assert_close(grads_fast[0][1:], grads_dense[0][1:], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads_fast[1], grads_dense[1], rtol=1e-4, atol=1e-7)
    l2_fast = cgc.gcc_l2_loss(cam_aug, cam, boxes, flips)
    torch.testing.assert_close(l2_fast, cgc.gcc_l2_loss_dense(cam_aug, cam, boxes, flips), rtol=1e-4, atol=1e-6)


def test_loss_is_near_its_minimum_for_exactly_transformed_heatmaps():
    g = torch.Generator().manual_seed(2)
    B, S, t = 8, 32, 0.5
    # Heatmaps given at the loss' own size, so the target T(g(x)) is exactly representable.
    cam = F.interpolate(torch.rand(B, 1, 4, 4, generator=g), size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    boxes, flips = random_boxes(B, g), torch.rand(B, generator=g) < 0.5
    consistent = cgc.transform_cam(cam, boxes, flips, S)
    loss = cgc.cgc_loss(consistent, cam, boxes, flips, temperature=t, size=S)
    # With every positive at cosine 1 the loss is the InfoNCE of the negatives alone.
    target = F.normalize(cgc.transform_cam(cam, boxes, flips, S).flatten(1), dim=1)
    cosine = target @ F.normalize(consistent.flatten(1), dim=1).T
    assert torch.allclose(cosine.diagonal(), torch.ones(B), atol=1e-5)
    expected = F.cross_entropy(cosine / t, torch.arange(B))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    # Breaking the correspondence (another image's map, or the untransformed map) costs more.
    assert cgc.cgc_loss(consistent.roll(1, 0), cam, boxes, flips, t, S) > loss + 0.05
    assert cgc.cgc_loss(cam, cam, boxes, flips, t, S) > loss
    assert cgc.gcc_l2_loss(consistent, cam, boxes, flips, S) < 1e-6 < cgc.gcc_l2_loss(cam, cam, boxes, flips, S)


def test_gradients_reach_the_backbone_from_both_branches():
    torch.manual_seed(0)
    model = build_model("resnet_tiny", num_classes=4)
    view, aug = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    boxes, flips = random_boxes(4, torch.Generator().manual_seed(0)), torch.tensor([True, False, True, False])
    for branch in ("view", "aug"):
        model.zero_grad()
        view_logits, view_features = model(view)
        classes = view_logits.detach().argmax(1)
        aug_logits, aug_features = model(aug)
        cam = model.cam(view_logits, view_features, classes)
        cam_aug = model.cam(aug_logits, aug_features, classes)
        # Detach the other branch: the gradient must still reach the trunk through this one.
        cam, cam_aug = (cam, cam_aug.detach()) if branch == "view" else (cam.detach(), cam_aug)
        cgc.cgc_loss(cam_aug, cam, boxes, flips).backward()
        assert model.conv1.weight.grad.abs().sum() > 0, branch
        assert model.fc.weight.grad.abs().sum() > 0, branch


def test_loss_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    model = build_model("resnet_tiny", num_classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, features = model(torch.randn(3, 3, 64, 64))
        cam = model.cam(logits, features, torch.tensor([0, 1, 2]))
        loss = cgc.cgc_loss(cam, cam, torch.tensor([[0, 0, 1, 1.0]] * 3), torch.zeros(3, dtype=torch.bool))
    assert features.dtype == torch.bfloat16
    assert cam.dtype == torch.float32 and loss.dtype == torch.float32
