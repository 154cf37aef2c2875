"""ResNet-50 parameter names (torchvision-compatible), weight loading, preprocessing, tiny training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradtune._validation import GradTuneInputError
from gradtune.data.base import GroupedDataset
from gradtune.models.classifier import find_last_linear, model_from_spec
from gradtune.models.resnet import (
    PretrainedWeightsError,
    ResNet,
    _resolve_weights,
    build_resnet,
    build_resnet50,
)
from gradtune.models.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocess,
    center_crop,
    load_image,
    random_resized_crop,
    resize,
)
from gradtune.training.config import TrainConfig
from gradtune.training.trainer import seeded_scope, train

torch.set_num_threads(1)

# torchvision.models.resnet50().state_dict(): 53 convolutions (1 weight each), 53 BatchNorms
# (weight, bias, running_mean, running_var, num_batches_tracked) and fc (weight, bias):
# 53 + 5 * 53 + 2 = 320 entries; 16 bottlenecks x 18 + 4 downsamples x 6 + stem 6 + fc 2.
TORCHVISION_RESNET50_KEYS = 320
TORCHVISION_RESNET50_PARAMS = 25_557_032
SAMPLE_KEYS = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer3.5.bn3.weight": (1024,),
    "layer4.0.downsample.1.num_batches_tracked": (),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}


def test_resnet50_state_dict_matches_torchvision_names_and_shapes():
    model = build_resnet50(1000)
    sd = model.state_dict()
    assert len(sd) == TORCHVISION_RESNET50_KEYS
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_RESNET50_PARAMS
    for key, shape in SAMPLE_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    # No downsample on non-first blocks, one per stage on block 0.
    assert {k.split(".downsample")[0] for k in sd if "downsample" in k} == {
        "layer1.0", "layer2.0", "layer3.0", "layer4.0"}
    assert [k for k in sd if k.startswith("layer4.3")] == []
    assert model.feature_dim == 2048 and find_last_linear(model) is model.fc


def _tiny(num_classes: int = 2, width: int = 8) -> ResNet:
    return build_resnet((1, 1, 1, 1), num_classes, width=width)


def test_loads_torchvision_format_file_and_replaces_head(tmp_path):
    with seeded_scope(0):
        src = _tiny(num_classes=1000)
    path = tmp_path / "weights.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)  # DDP-style prefix
    with seeded_scope(1):
        model = build_resnet((1, 1, 1, 1), 3, width=8, weights=path)
    for key, value in src.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(model.state_dict()[key], value), key
    assert model.fc.out_features == 3 and model.spec["num_classes"] == 3


def test_same_head_size_is_loaded(tmp_path):
    with seeded_scope(0):
        src = _tiny(num_classes=2)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    model = build_resnet((1, 1, 1, 1), 2, width=8, weights=path)
    assert torch.equal(model.fc.weight, src.fc.weight)


def test_mismatched_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_tiny(width=16).state_dict(), path)
    with pytest.raises(GradTuneInputError, match="does not match"):
        build_resnet((1, 1, 1, 1), 2, width=8, weights=path)
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        build_resnet((1, 1, 1, 1), 2, width=8, weights=tmp_path / "missing.pth")


def test_imagenet_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsError, match="never downloads"):
        build_resnet50(2, weights="imagenet")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet50-0676ba61.pth").write_bytes(b"")
    assert _resolve_weights("imagenet") == cache / "resnet50-0676ba61.pth"


def test_spec_rebuilds_the_architecture():
    model = _tiny(num_classes=5, width=4)
    clone = model_from_spec(model.spec)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(clone.eval()(x), model.eval()(x))


def test_bad_input_shapes():
    with pytest.raises(GradTuneInputError, match="layers"):
        ResNet((1, 1, 1))
    with pytest.raises(GradTuneInputError, match=r"\(N, 3, H, W\)"):
        _tiny()(torch.randn(2, 1, 32, 32))


# ------------------------------------------------------------------------- preprocessing
def test_eval_transform_shapes_and_normalization():
    prep = ImagePreprocess()
    img = torch.full((3, 300, 400), 128, dtype=torch.uint8)
    out = prep(img, train=False)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
    shorter = ImagePreprocess(eval_resize="shorter")
    assert resize(img.float(), 256).shape == (3, 256, 341)
    assert shorter(img).shape == (3, 224, 224)


def test_center_crop_is_central():
    img = torch.arange(10 * 10, dtype=torch.float32).reshape(1, 10, 10).expand(3, 10, 10)
    crop = center_crop(img, 4)
    assert torch.equal(crop, img[:, 3:7, 3:7])


def test_random_resized_crop_is_seeded_and_in_range():
    img = torch.rand(3, 60, 80)
    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (0, 0, 1))
    a = random_resized_crop(img, 32, g1, scale=(0.7, 1.0))
    b = random_resized_crop(img, 32, g2, scale=(0.7, 1.0))
    c = random_resized_crop(img, 32, g3, scale=(0.7, 1.0))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    prep = ImagePreprocess(size=32)
    outs = {tuple(prep(img, train=True, generator=torch.Generator().manual_seed(s)).flatten()[:5].tolist())
            for s in range(8)}
    assert len(outs) == 8
    with pytest.raises(GradTuneInputError, match="Generator"):
        prep(img, train=True)


def test_load_image_file(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    arr = np.random.default_rng(0).integers(0, 255, size=(20, 30, 3), dtype=np.uint8)
    pil.fromarray(arr).save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png")
    assert t.shape == (3, 20, 30) and torch.equal(t, torch.from_numpy(arr).permute(2, 0, 1))
    prep = ImagePreprocess(size=16, resize_to=18, root=tmp_path)
    assert prep("a.png").shape == (3, 16, 16)
    with pil.open(tmp_path / "a.png") as im:
        torch.testing.assert_close(prep(im), prep(t))
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


# ------------------------------------------------------------------------------ training
def _color_images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Class 1 images are reddish, class 0 bluish, with noise: (n, 3, 32, 32) uint8."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    imgs = rng.integers(0, 120, size=(n, 3, 32, 32))
    imgs[labels == 1, 0] += 120
    imgs[labels == 0, 2] += 120
    return torch.from_numpy(imgs.astype(np.uint8)), labels


def test_tiny_resnet_trains_on_cpu():
    imgs, labels = _color_images(64, 0)
    data = GroupedDataset("toy", imgs, labels, labels, labels, np.zeros(64), ["a", "b"], ["x", "y"],
                          ["g0", "g1"])
    with seeded_scope(0):
        model = _tiny()
    cfg = TrainConfig(optimizer="sgd", lr=0.05, schedule="cosine", batch_size=16, epochs=4,
                      seed=0, progress=False)
    result = train(model, data, cfg, preprocess=ImagePreprocess(size=32, resize_to=36))
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert result.history[-1]["lr"] < cfg.lr * 0.2  # cosine decayed
