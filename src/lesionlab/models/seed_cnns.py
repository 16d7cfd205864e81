"""The two CNNs of the seed study, module for module: print(model) gives the notebook's lines."""
from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """One conv block and a wide fully connected head; expects 128x128 input."""

    head_name = "fc.2"  # the classifier: everything before it is the encoder (256 features)

    def __init__(self, image_size: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, stride=1, padding=1)
        self.batchNorm1 = nn.BatchNorm2d(32)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        # the head's width follows the input size: 32 channels x (size/2)^2 after one pooling
        self.fc = nn.Sequential(
            nn.Linear(32 * (image_size // 2) ** 2, 256),
            nn.ReLU(),
            nn.Linear(256, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.batchNorm1(self.conv1(x))))
        return self.fc(self.flatten(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 256): the input of the final Linear layer."""
        x = self.pool1(self.relu1(self.batchNorm1(self.conv1(x))))
        return self.fc[1](self.fc[0](self.flatten(x)))


class UpgradedCNN(nn.Module):
    """Four conv blocks, global average pooling and dropout; any input size."""

    CAM_LAYER = "features.14"  # the ReLU of the fourth block: the last map before global pooling
    head_name = "classifier.2"  # the classifier: everything before it is the encoder (256 features)

    def __init__(self, image_size: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, 32, 64, 128, 256]
        for i in range(4):
            layers += [nn.Conv2d(channels[i], channels[i + 1], kernel_size=3, stride=1, padding=1),
                       nn.BatchNorm2d(channels[i + 1]), nn.ReLU()]
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2) if i < 3 else nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.4), nn.Linear(256, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 256): the globally average-pooled features (dropout belongs to the classifier)."""
        return self.features(x).flatten(1)
