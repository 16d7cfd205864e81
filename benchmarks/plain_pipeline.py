"""The pipeline a notebook would write, as the yardstick for lesionlab's training loop: an
ImageFolder-style dataset that opens, decodes, resizes and normalises every JPEG with PIL in
__getitem__, fp32, DataLoader defaults (batch 32, no workers), Adam and BCE.

    python benchmarks/plain_pipeline.py --train train.csv --val val.csv --model simple_cnn --epochs 3 --out plain.json

train.csv/val.csv: columns path,label. Prints and writes img/s per epoch and the validation metrics.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from lesionlab.metrics import average_precision, roc_auc
from lesionlab.models.seed_cnns import SimpleCNN, UpgradedCNN


class LesionDataset(Dataset):
    def __init__(self, frame: pd.DataFrame):
        self.paths, self.labels = frame["path"].tolist(), frame["label"].astype(np.float32).tolist()
        self.tf = transforms.Compose([transforms.Resize((128, 128)), transforms.ToTensor(),
                                      transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = Image.open(self.paths[i]).convert("RGB")
        return self.tf(image), torch.tensor(self.labels[i])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    seed_cnns = {"simple_cnn": SimpleCNN, "upgraded_cnn": UpgradedCNN}
    # any other name as a notebook would build it: timm, one logit, random weights (speed is what is compared)
    model = (seed_cnns[args.model]() if args.model in seed_cnns
             else timm.create_model(args.model, pretrained=False, num_classes=1)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = nn.BCEWithLogitsLoss()
    train_loader = DataLoader(LesionDataset(pd.read_csv(args.train)), batch_size=32, shuffle=True)
    val_loader = DataLoader(LesionDataset(pd.read_csv(args.val)), batch_size=32)
    epochs = []
    for epoch in range(args.epochs):
        model.train()
        seen, t0 = 0, time.perf_counter()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x).squeeze(1), y)
            loss.backward()
            optimizer.step()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        model.eval()
        logits, labels = [], []
        with torch.no_grad():
            for x, y in val_loader:
                logits.append(model(x.to(device)).squeeze(1).cpu())
                labels.append(y)
        z, y = torch.cat(logits).numpy().astype(np.float64), torch.cat(labels).numpy()
        p = 1 / (1 + np.exp(-z))
        val_loss = float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
        row = {"epoch": epoch + 1, "img_s": seen / seconds, "val_loss": val_loss,
               "val_roc_auc": roc_auc(y, p), "val_average_precision": average_precision(y, p)}
        epochs.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "device": str(device), "epochs": epochs}, indent=1))


if __name__ == "__main__":
    main()
