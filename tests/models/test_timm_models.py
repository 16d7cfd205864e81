"""timm backbones from scratch and from local pretrained files (models/timm_models.py, models/weights.py)."""
import pytest
import torch

from lesionlab.errors import BadInputError
from lesionlab.models import create_model


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "convnextv2_nano"])
def test_timm_backbones_from_scratch(name):
    model = create_model(name, image_size=64)
    model.eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_pretrained_from_a_local_file(tmp_path):
    import timm

    source = timm.create_model("resnet18")
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = create_model("resnet18", pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 1  # the ImageNet head is replaced


def test_pretrained_file_nested_or_safetensors_loads(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18")
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, tmp_path / "n.pth")
    save_file(source.state_dict(), str(tmp_path / "r18.safetensors"))
    for name in ("n.pth", "r18.safetensors"):
        model = create_model("resnet18", pretrained=str(tmp_path / name))
        assert torch.equal(model.layer4[0].conv1.weight, source.layer4[0].conv1.weight), name


def test_pretrained_file_that_would_run_code_is_refused(tmp_path):
    from test_fileio import plant_hostile_checkpoint

    marker = tmp_path / "ran"
    plant_hostile_checkpoint(tmp_path / "weights.pth", marker)
    with pytest.raises(BadInputError, match=r"weights\.pth: holds Python objects that lesionlab does not load"):
        create_model("resnet18", pretrained=str(tmp_path / "weights.pth"))
    assert not marker.exists()
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(BadInputError, match=r"empty\.pth: expected a state dict of tensors"):
        create_model("resnet18", pretrained=str(tmp_path / "empty.pth"))


def test_pretrained_offline_without_file_is_a_clear_error(monkeypatch):
    from lesionlab.models import timm_models

    monkeypatch.setattr(timm_models, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-lesionlab-cache")
    with pytest.raises(BadInputError, match="did not answer and no copy is cached locally, and no installed weights "
                       "package covers 'resnet18'.*lesionlab\\[weights\\].*pass a local weights file"):
        create_model("resnet18", pretrained=True)
    with pytest.raises(BadInputError, match="no such weights file"):
        create_model("resnet18", pretrained="/nonexistent/weights.pth")
    with pytest.raises(BadInputError, match="has no pretrained weights"):
        create_model("simple_cnn", pretrained=True)
