"""The settings of `lesionlab synth train|sample|import|check`, as config models (see commands.py)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from ..choices import ClassName, GeneratorKind
from .commands import CommandConfig

CLASS_POWER = 0.0  # synth train's class draw (synth.generator.class_draw_probabilities): 0 balances the classes


class SynthTrainConfig(CommandConfig):
    """`lesionlab synth train DATA_DIR --out GEN_DIR`."""

    kind: GeneratorKind = Field("projected", description="projected: Projected GAN (frozen ImageNet EfficientNet-Lite0 "
                                "discriminator features, FastGAN generator, DiffAugment); gan: DCGAN with DiffAugment; "
                                "ddpm: diffusers UNet2DModel with DDPM/DDIM")
    classes: Optional[Literal["both", "one"]] = Field(
        None, description="both: class-conditional on the whole train pool (projected only; the default there); one: "
        "only --label's images (the default of gan and ddpm)")
    label: ClassName = Field("malignant", description="the class to learn (--classes one) or to estimate FID on")
    size: Literal[32, 64, 128] = Field(64, description="pixels")
    steps: int = Field(4000, ge=1, description="training steps (more continues a finished generator)")
    batch_size: int = Field(32, ge=1, description="images per step")
    seed: int = Field(0, description="seed of initialisation, batch order and augmentation")
    sample_every: int = Field(500, ge=1, description="steps between sample grids")
    checkpoint_every: int = Field(250, ge=1, description="steps between checkpoints")
    time_budget: Optional[float] = Field(None, gt=0, description="minutes: stop at a checkpoint once spent")
    n_real: Optional[int] = Field(None, ge=1, description="learn only from the images a training draw of this many "
                                  "takes (e.g. 293 = the notebook's draw; default: the whole train pool of the class)")
    draw_seed: int = Field(0, description="the seed of that training draw")
    sample_steps: int = Field(50, ge=1, description="ddpm: DDIM steps per sample")
    d_res: int = Field(96, description="projected: pixels at which the discriminator's frozen network sees each image "
                       "(32 to 256; the paper: 224)")
    fid_every: int = Field(500, ge=0, description="steps between FID estimates (0: none)")
    fid_features: str = Field("random", description="network of the FID estimate: random (a never-trained VGG-11) or "
                              "RUN_DIR of a trained classifier")
    fid_n: int = Field(500, ge=2, description="images a side in the FID estimate (a fixed subset)")
    class_power: float = Field(CLASS_POWER, ge=0, le=1, description="--classes both: a step draws each class with probability "
                               "proportional to its image count to this power (0: balanced, each rare image seen as "
                               "often as the common class; 1: as the pool holds them; 0.5: square-root sampling)")
    precision: Literal["auto", "32", "bf16"] = Field(
        "auto", description="projected: auto = bf16 autocast of the training step when a few measured steps on this "
        "machine are faster (only where the CPU computes bf16 natively), else fp32; sampling is always fp32")
    copy_watch: Literal["val", "train", "off"] = Field(
        "val", description="val: at every FID estimate, test the samples for data copying against the split's "
        "validation images of --label (never learned from); sample from the stop --copy-rule selects and stop "
        "training once --copy-patience stops in a row copy. train: the same against the class's training images "
        "themselves, each measured against the other patients' or lesions' (needs no validation image). off: sample "
        "the last step")
    copy_rule: Literal["margin", "last"] = Field(
        "margin", description="--copy-watch val or train: which stop without copying to sample. margin: among the stops whose "
        "FID-estimate samples reach recall 0.3 and coverage 0.5 against the class's training images, the one farthest "
        "from copying (the largest Z_U, the worse of pixels and features); without one, the last. last: the last stop "
        "without copying")
    device: str = Field("auto", description="where --kind projected trains: auto (a CUDA GPU when there is one), cpu, "
                        "cuda or cuda:N; gan and ddpm train on the CPU, and sampling always runs there")
    watch_n: Optional[int] = Field(
        None, ge=10, description="--copy-watch val or train: samples tested at each stop (default: the FID estimate's, "
        "--fid-n capped at the class's training images); as many as you will sample (3000, say) tests each k-means "
        "cell with the power the sampled set will be judged with (about 30 s a stop for 3000 on a 2-core CPU)")
    copy_patience: int = Field(2, ge=1, description="--copy-watch val or train: watched stops in a row that copy "
                               "before training stops (stops whose samples are under recall 0.3 or coverage 0.5 are "
                               "passed over: an unlearned generator's crowded samples read as copying)")


class SynthSampleConfig(CommandConfig):
    """`lesionlab synth sample GEN_DIR --out SYN_DIR`."""

    n: int = Field(3000, ge=1, description="images to sample")
    seed: int = Field(0, description="seed of the samples (the same seed gives the same images)")
    label: ClassName = Field("malignant", description="the class to sample (one the generator learned)")
    drop_near_copies: Optional[str] = Field(
        None, description="DATA_DIR the generator learned from: drop each sample nearer to one of its training images "
        "than 99% of them are to their nearest other one (check's near-copy rule, 32x32 pixels), or that the training "
        "leak guard would call a copy of one of its images the generator never saw (validation, test, a cv fold's "
        "held-out images), and draw another")


class SynthImportConfig(CommandConfig):
    """`lesionlab synth import FOLDER --out SYN_DIR`."""

    label: ClassName = Field("malignant", description="the class of the imported images")
    generator: str = Field("external", description="a name for the generator that made them")


class SynthCheckConfig(CommandConfig):
    """`lesionlab synth check GEN_DIR|SYN_DIR --data DATA_DIR --features NET`."""

    data: str = Field(description="DATA_DIR with the real images")
    features: list[str] = Field(min_length=1, description="a feature network: RUN_DIR of a trained lesionlab "
                                "classifier (its penultimate layer), random (a never-trained VGG-11) or lite0-imagenet "
                                "(the projected discriminator's own network, flagged as flattering); the first one also "
                                "measures copies in feature space")
    n: int = Field(1000, ge=1, description="synthetic images to compare")
    seed: int = Field(0, description="seed of the synthetic images drawn")
    label: Optional[ClassName] = Field(None, description="the class to check (default: malignant when the generator "
                                       "learned it)")
