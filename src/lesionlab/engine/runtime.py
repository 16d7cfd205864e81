"""Where and how tensors are computed: device, precision, memory format, threads."""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..choices import INTERPOLATIONS
from ..errors import BadInputError

# ImageNet statistics: the seed study normalised its inputs, and most pretrained backbones expect these
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How a run turns the store's uint8 images into the model's input: resized to `input_size`
    (0 = the store's size, no resize) with `interpolation`, then normalised with `mean` and `std`.
    A pretrained backbone brings its own (its pretrained config's), recorded in the checkpoint so
    that predict, explain and export apply exactly what training applied."""

    mean: tuple = MEAN
    std: tuple = STD
    interpolation: str = "bilinear"
    input_size: int = 0
    source: str = "ImageNet statistics (lesionlab's default)"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise BadInputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got '{self.interpolation}'")
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) or not 0 <= self.input_size <= 8192:
            raise BadInputError(f"input_size must be a whole number of pixels from 0 to 8192, got {self.input_size!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or not all(v > 0 for v in self.std):
            raise BadInputError(f"mean and std must be 3 numbers each (std > 0), got {list(self.mean)} and {list(self.std)}")

    def side(self, store_size: int) -> int:
        """The model's input side for images of `store_size`."""
        return int(self.input_size or store_size)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                "input_size": int(self.input_size), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Preprocessing":
        """From a checkpoint or encoder file; files written before these keys existed used ImageNet
        statistics at the store's size."""
        d = d or {}
        return cls(tuple(d.get("mean", MEAN)), tuple(d.get("std", STD)), str(d.get("interpolation", "bilinear")),
                   int(d.get("input_size", 0) or 0), str(d.get("source", cls.source)))

    def to_input(self, batch_uint8_nhwc: torch.Tensor, rt: "Runtime") -> torch.Tensor:
        return to_input(batch_uint8_nhwc, rt, self.mean, self.std, self.input_size, self.interpolation)


IMAGENET = Preprocessing()


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    # float32, or float64 (--precision 64) to check numerics: in float64 rounding cannot hide whether
    # two set-ups (1 and N processes, say) compute the same thing
    dtype: torch.dtype = torch.float32

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> dict:
        precision = "bf16" if self.bf16 else {torch.float64: "64"}.get(self.dtype, "32")
        return {"device": str(self.device), "precision": precision,
                "channels_last": self.channels_last, "threads": torch.get_num_threads(),
                "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name()}


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def cpu_has_native_bf16() -> bool:
    """True where oneDNN computes bf16 in hardware (AVX512-BF16/AMX); elsewhere bf16 autocast
    is emulated and measured 10x slower than fp32 on the seed CNNs."""
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


_ALLOCATOR_TUNED = False


def tune_allocator() -> None:
    """Keep freed memory in the heap instead of returning it to the OS (glibc only).

    A training step frees and re-allocates activations of tens of MB; past glibc's mmap threshold
    (32 MB at most) each one is a fresh mmap whose pages the kernel must fault in and zero. On the
    2-core CPU this measured 42 -> 88 img/s for simple_cnn and 30 -> 50 for upgraded_cnn, with
    system time per 15 steps 9 s -> 0.1 s.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux"):
        return
    _ALLOCATOR_TUNED = True
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: str = "auto",
                    model_prefers_channels_last: bool = True, num_threads: int = 0) -> Runtime:
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise BadInputError(f"--device must be auto, cpu, cuda or cuda:N, got '{device}'") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BadInputError(f"--device {device}: no CUDA device is available here")
    if dev.type == "cpu":
        tune_allocator()
        torch.set_num_threads(num_threads or max(1, len(os.sched_getaffinity(0))))
    if precision == "auto":
        bf16 = dev.type == "cuda" or cpu_has_native_bf16()
    else:
        bf16 = precision == "bf16"
    cl = model_prefers_channels_last if channels_last == "auto" else channels_last == "true"
    return Runtime(dev, bf16, cl, torch.float64 if precision == "64" else torch.float32)


def resize_input(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Float (N, 3, H, W) pixel values (0-255) to size x size, clamped to the pixel range as an
    image library's resize would be (bicubic overshoots at edges). Enlarging only: shrinking is done
    at prepare time, with an antialiased filter (refused earlier, by the config check)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False).clamp_(0, 255)


def to_input(batch_uint8_nhwc: torch.Tensor, rt: Runtime, mean: tuple = MEAN, std: tuple = STD,
             size: int = 0, interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W) on the device, resized to `size` first
    when it is given and differs from the images' (Preprocessing.input_size).

    NHWC memory already is channels_last, so no copy is made when the model wants that format.
    """
    x = batch_uint8_nhwc.to(rt.device, non_blocking=True).permute(0, 3, 1, 2).to(rt.dtype)
    if size:
        x = resize_input(x, size, interpolation)
    m = torch.tensor(mean, device=rt.device, dtype=rt.dtype).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=rt.device, dtype=rt.dtype).view(1, 3, 1, 1) * 255
    x = x.sub_(m).div_(s)
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x.contiguous()
