import pytest
import torch

from lesionlab.errors import BadInputError
from lesionlab.models import create_model, list_models

# printed by the seed notebook (torch of its time; newer torch adds "bias=True" to BatchNorm's repr)
SIMPLE_CNN = """SimpleCNN(
  (conv1): Conv2d(3, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
  (batchNorm1): BatchNorm2d(32, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
  (relu1): ReLU(inplace=True)
  (pool1): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
  (flatten): Flatten(start_dim=1, end_dim=-1)
  (fc): Sequential(
    (0): Linear(in_features=131072, out_features=256, bias=True)
    (1): ReLU()
    (2): Linear(in_features=256, out_features=1, bias=True)
  )
)"""

UPGRADED_CNN = """UpgradedCNN(
  (features): Sequential(
    (0): Conv2d(3, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (1): BatchNorm2d(32, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (2): ReLU()
    (3): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    (4): Conv2d(32, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (5): BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (6): ReLU()
    (7): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    (8): Conv2d(64, 128, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (9): BatchNorm2d(128, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (10): ReLU()
    (11): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    (12): Conv2d(128, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    (13): BatchNorm2d(256, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    (14): ReLU()
    (15): AdaptiveAvgPool2d(output_size=1)
  )
  (classifier): Sequential(
    (0): Flatten(start_dim=1, end_dim=-1)
    (1): Dropout(p=0.4, inplace=False)
    (2): Linear(in_features=256, out_features=1, bias=True)
  )
)"""


def _printed(model) -> str:
    return str(model).replace("affine=True, bias=True,", "affine=True,")


@pytest.mark.parametrize("name,expected", [("simple_cnn", SIMPLE_CNN), ("upgraded_cnn", UPGRADED_CNN)])
def test_print_matches_the_notebook(name, expected):
    assert _printed(create_model(name)) == expected


@pytest.mark.parametrize("name", ["simple_cnn", "upgraded_cnn"])
def test_forward_shapes(name):
    model = create_model(name, image_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1)


def test_parameter_counts():
    assert sum(p.numel() for p in create_model("simple_cnn").parameters()) == 33_555_905  # 896 + 64 + 131,072 x 256 + 256 + 257
    assert sum(p.numel() for p in create_model("upgraded_cnn").parameters()) == 389_633  # 896+64 + 18,496+128 + 73,856+256 + 295,168+512 + 257


def test_unknown_model_names_the_closest():
    with pytest.raises(BadInputError, match="unknown model 'simple_cn'.*did you mean 'simple_cnn'.*known:"):
        create_model("simple_cn")
    assert {"simple_cnn", "upgraded_cnn"} <= set(list_models())
