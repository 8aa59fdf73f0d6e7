"""Grad-CAM, the heatmap transform and the CGC / GCC losses."""
import pytest
import torch
import torch.nn.functional as F

from semisup.method import cgc, explainers
from semisup.models.base import build_model
from semisup.tools.reference import pixel_boxes_and_flips, released_cgc_loss
from tests import dense_losses


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
    closed = explainers.gradcam(model, logits, features, classes)
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


def test_transform_cam_equals_the_released_slice_resize_flip():
    g = torch.Generator().manual_seed(0)
    S = 224
    cam = F.interpolate(torch.rand(6, 1, 7, 7, generator=g), size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    # Flipped, unflipped, the full view, a near-full box touching the border, small crops.
    pixel_boxes = [[10, 20, 100, 150], [0, 0, 224, 224], [0, 0, 224, 224], [1, 0, 223, 224], [60, 100, 64, 124], [120, 3, 21, 17]]
    boxes = torch.tensor(pixel_boxes, dtype=torch.float32) / S
    flips = torch.tensor([True, False, True, False, True, True])
    ours = cgc.transform_cam(cam, boxes, flips, S)
    torch.testing.assert_close(ours[1], cam[1], rtol=0, atol=1e-6)  # the full unflipped box is the identity
    for b, (i, j, h, w) in enumerate(pixel_boxes):
        crop = F.interpolate(cam[b, i:i + h, j:j + w][None, None], size=(S, S), mode="bilinear", align_corners=False)[0, 0]
        torch.testing.assert_close(ours[b], crop.flip(-1) if flips[b] else crop, rtol=0, atol=1e-5)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("batch", [16, 128])
def test_cgc_loss_equals_the_released_per_sample_loss_in_value_and_gradient(batch):
    g = torch.Generator().manual_seed(batch)
    cam = (torch.rand(batch, 7, 7, generator=g) - 0.3).relu().requires_grad_()  # relu'd maps: some pixels exactly 0
    cam_aug = (torch.rand(batch, 7, 7, generator=g) - 0.3).relu().requires_grad_()
    pixel, boxes, flips = pixel_boxes_and_flips(batch, g)
    for group in (None, 8):
        ours = cgc.cgc_loss(cam_aug, cam, boxes, flips, temperature=0.5, group_size=group)
        reference = released_cgc_loss(cam_aug, cam, pixel, flips.tolist(), 0.5, group_size=group)
        assert abs(ours.item() - reference.item()) <= 1e-5 * abs(reference.item()), (group, ours.item(), reference.item())
        grads = torch.autograd.grad(ours, [cam, cam_aug])
        expected = torch.autograd.grad(reference, [cam, cam_aug])
        for got, want in zip(grads, expected):
            assert _cosine(got, want) > 0.9999 and abs(got.norm() / want.norm() - 1) < 1e-3, group
    dense = dense_losses.cgc_loss_dense(cam_aug, cam, boxes, flips, temperature=0.5, group_size=8)
    torch.testing.assert_close(dense, released_cgc_loss(cam_aug, cam, pixel, flips.tolist(), 0.5, group_size=8), rtol=1e-5, atol=0)


def test_negatives_are_the_other_augmented_maps_not_the_transformed_views():
    g = torch.Generator().manual_seed(3)
    cam, cam_aug = torch.rand(8, 7, 7, generator=g), torch.rand(8, 7, 7, generator=g)
    pixel, boxes, flips = pixel_boxes_and_flips(8, g)
    aug_anchor = cgc.cgc_loss(cam_aug, cam, boxes, flips)
    cross = cgc.cgc_loss(cam_aug, cam, boxes, flips, negatives="cross")
    assert abs(aug_anchor.item() - cross.item()) > 1e-4  # different losses, not a renamed one
    torch.testing.assert_close(cross, dense_losses.cgc_loss_dense(cam_aug, cam, boxes, flips, negatives="cross"), rtol=1e-5, atol=0)


def test_huge_and_all_zero_heatmaps_give_finite_losses_and_gradients():
    g = torch.Generator().manual_seed(4)
    cam = (torch.rand(6, 7, 7, generator=g) * 1e30).requires_grad_()  # finite, but its square overflows float32
    cam_aug = torch.rand(6, 7, 7, generator=g)
    cam_aug[0] = 0  # an all-zero map becomes the uniform eps map, as in the released code
    cam_aug.requires_grad_()
    pixel, boxes, flips = pixel_boxes_and_flips(6, g)
    for loss in (cgc.cgc_loss(cam_aug, cam, boxes, flips), cgc.gcc_l2_loss(cam_aug, cam, boxes, flips)):
        assert torch.isfinite(loss)
        assert all(torch.isfinite(x).all() for x in torch.autograd.grad(loss, [cam, cam_aug]))
    # Scale does not change the loss: the maps are normalised to sum 1 first.
    torch.testing.assert_close(cgc.cgc_loss(cam_aug, cam, boxes, flips), cgc.cgc_loss(cam_aug, cam / 1e30, boxes, flips), rtol=1e-5, atol=0)


def test_gcc_loss_is_the_released_mse_of_l2_normalised_masks():
    g = torch.Generator().manual_seed(5)
    cam, cam_aug = torch.rand(10, 7, 7, generator=g).requires_grad_(), torch.rand(10, 7, 7, generator=g).requires_grad_()
    pixel, boxes, flips = pixel_boxes_and_flips(10, g)
    ours = cgc.gcc_l2_loss(cam_aug, cam, boxes, flips)
    reference = released_cgc_loss(cam_aug, cam, pixel, flips.tolist(), l2=True)
    assert abs(ours.item() - reference.item()) <= 1e-4 * reference.item()
    for got, want in zip(torch.autograd.grad(ours, [cam, cam_aug]), torch.autograd.grad(reference, [cam, cam_aug])):
        assert _cosine(got, want) > 0.999
    torch.testing.assert_close(dense_losses.gcc_l2_loss_dense(cam_aug, cam, boxes, flips), reference, rtol=1e-4, atol=0)


def test_loss_is_lowest_for_exactly_transformed_heatmaps():
    g = torch.Generator().manual_seed(2)
    B, S, t = 8, 32, 0.5
    # Heatmaps given at the loss' own size, so the target T(g(x)) is exactly representable.
    cam = F.interpolate(torch.rand(B, 1, 4, 4, generator=g), size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    boxes, flips = random_boxes(B, g), torch.rand(B, generator=g) < 0.5
    consistent = cgc.transform_cam(cam, boxes, flips, S)
    loss = cgc.cgc_loss(consistent, cam, boxes, flips, temperature=t, size=S)
    # Every positive at cosine ~1: the loss is the InfoNCE of the aug-vs-aug negatives alone.
    aug = F.normalize(consistent.flatten(1), dim=1)
    neg = (aug @ aug.T)[~torch.eye(B, dtype=torch.bool)].view(B, B - 1)
    expected = F.cross_entropy(torch.cat([torch.ones(B, 1), neg], 1) / t, torch.zeros(B, dtype=torch.long))
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-4)
    # Breaking the correspondence (another image's map, or the untransformed map) costs more.
    assert cgc.cgc_loss(consistent.roll(1, 0), cam, boxes, flips, t, S) > loss + 0.05
    assert cgc.cgc_loss(cam, cam, boxes, flips, t, S) > loss
    assert cgc.gcc_l2_loss(consistent, cam, boxes, flips, S) < 1e-9 < cgc.gcc_l2_loss(cam, cam, boxes, flips, S)


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
        cam = explainers.gradcam(model, view_logits, view_features, classes)
        cam_aug = explainers.gradcam(model, aug_logits, aug_features, classes)
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
        cam = explainers.gradcam(model, logits, features, torch.tensor([0, 1, 2]))
        loss = cgc.cgc_loss(cam, cam, torch.tensor([[0, 0, 1, 1.0]] * 3), torch.zeros(3, dtype=torch.bool))
    assert features.dtype == torch.bfloat16
    assert cam.dtype == torch.float32 and loss.dtype == torch.float32
