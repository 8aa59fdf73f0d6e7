"""Loading SwAV, torchvision and own checkpoints into the trunk."""
import pytest
import torch
import torchvision

from semisup.config import ConfigError, parse_config
from semisup.models.base import build_model
from semisup.models.loading import CheckpointError, load_pretrained
from semisup.run import main
from semisup.train.trainer import Schedule


def swav_like_checkpoint(path, arch="resnet50"):
    """Same key layout and shapes as swav_800ep_pretrain.pth.tar: 'module.' prefix, no fc,
    projection head and prototypes."""
    torch.manual_seed(1)
    net = torchvision.models.get_model(arch, weights=None)
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    width = net.fc.in_features
    state.update({"module.projection_head.0.weight": torch.randn(2048, width), "module.projection_head.0.bias": torch.zeros(2048),
                  "module.prototypes.weight": torch.randn(3000, 128)})
    torch.save(state, path)
    return net


def test_swav_checkpoint_loads_every_trunk_tensor(tmp_path):
    source = swav_like_checkpoint(tmp_path / "swav.pth.tar")
    model = build_model("resnet50", num_classes=10)
    head_before = model.fc.weight.clone()
    report = load_pretrained(model, tmp_path / "swav.pth.tar")
    assert report["loaded"] == len(model.trunk_keys()) == 318 and report["missing"] == 0
    assert report["unused"] == 3  # projection head and prototypes
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.fc.weight, head_before)  # the head starts fresh


def test_wrong_architecture_garbage_and_unknown_prefix_are_refused(tmp_path):
    swav_like_checkpoint(tmp_path / "r50.pth", "resnet50")
    with pytest.raises(CheckpointError, match="do not match --arch resnet18|not found"):
        load_pretrained(build_model("resnet18", 10), tmp_path / "r50.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage.pth: not a readable"):
        load_pretrained(build_model("resnet18", 10), tmp_path / "garbage.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_pretrained(build_model("resnet18", 10), tmp_path / "list.pth")
    # An unknown prefix must not "load" nothing silently, as strict=False would.
    state = {f"encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    torch.save(state, tmp_path / "moco.pth")
    with pytest.raises(CheckpointError, match="100 of 100 trunk tensors not found"):
        load_pretrained(build_model("resnet18", 10), tmp_path / "moco.pth")


def test_torchvision_and_own_checkpoints_load(tmp_path):
    net = torchvision.models.resnet18(num_classes=1000)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    model = build_model("resnet18", num_classes=5)
    report = load_pretrained(model, tmp_path / "tv.pth")
    assert report["loaded"] == len(model.trunk_keys()) and report["unused"] == 2  # fc.weight, fc.bias (1000 classes)
    assert torch.equal(model.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    own = build_model("resnet18", num_classes=5)
    torch.save(dict(model=own.state_dict(), step=3, config={}), tmp_path / "own.pt")
    assert load_pretrained(build_model("resnet18", 5), tmp_path / "own.pt")["loaded"] == len(model.trunk_keys())


def test_dry_run_reports_loaded_trunk_tensors(tmp_path, demo_cache, capsys):
    net = build_model("resnet_tiny", 10)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}, tmp_path / "tiny.pth")
    assert main(["--demo-cache", demo_cache, "--pretrained", str(tmp_path / "tiny.pth"), "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"trunk_tensors_loaded {len(net.trunk_keys())}" in out


def test_config_file_sets_defaults_and_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr_head: 2.5\ncgc_weight: 0.5\nlr-milestones: [3, 4]\n")
    cfg = parse_config(["--config", str(config), "--lambda", "0.1"])
    assert (cfg.lr_head, cfg.cgc_weight, cfg.lr_milestones) == (2.5, 0.1, (3, 4))
    config.write_text("lr_hed: 2.5\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown keys \['lr_hed'\]"):
        parse_config(["--config", str(config)])
    # Milestones may fall inside an epoch; integral ones stay ints in the saved config.
    cfg = parse_config(["--lr-milestones", "0.5", "2"])
    assert cfg.to_dict()["lr_milestones"] == [0.5, 2] and isinstance(cfg.to_dict()["lr_milestones"][1], int)
    schedule = Schedule(steps_per_epoch=10, total_steps=30, milestones=cfg.lr_milestones, gamma=0.2)
    assert [schedule.factor(s) for s in (4, 5, 19, 20)] == pytest.approx([1, 0.2, 0.2, 0.04])
    # Defaults are the published 1 % recipe when a dataset is given.
    cfg = parse_config(["--data", "/imagenet"])
    assert (cfg.batch_labeled, cfg.batch_unlabeled, cfg.lr_trunk, cfg.lr_head, cfg.lr_milestones, cfg.lr_gamma, cfg.epochs,
            cfg.cgc_weight, cfg.temperature, cfg.weight_decay, cfg.momentum) == (128, 128, 0.02, 5.0, (12, 16), 0.2, 50, 0.25, 0.5, 0.0, 0.9)
