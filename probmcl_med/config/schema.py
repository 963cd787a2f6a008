"""The schema of a run: one validated pydantic model per config section, and what each training mode reads.

Every choice a run makes (dataset, encoder, the contrastive and classifier settings, the run's length, output folder,
device, seed, workers, AMP) is a key here. Unknown keys and bad values are rejected; names that must be registered
(similarity, overlap, likelihood, dataset) are checked against the registries, with close matches.
:data:`UNUSED_KEYS` says which keys each mode never reads (``--print-config`` hides them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from probmcl_med.errors import ConfigError
from probmcl_med.registry import DATASETS, LIKELIHOODS, OVERLAPS, SIMILARITIES, Registry


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)


MAX_EPOCHS = 100_000
MAX_BATCH = 1_048_576
MAX_WIDTH = 65_536
"""Upper bounds that no real run reaches: a value beyond them is a typo (``epochs=1e23``), refused at validation."""

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


def _registered(registry: Registry, value: str) -> str:
    if value not in registry:
        raise ValueError(registry.unknown_message(value).split(" (plugins are loaded")[0])
    return value


class AugmentConfig(_Section):
    """How training views are augmented: a named policy (probmcl_med.data.augment) and its settings."""

    policy: Literal["none", "flip", "randaugment", "pathology"] = Field(
        "flip",
        description="none; flip (hflip/vflip); randaugment (the flips + num_ops operations at magnitude); pathology "
        "(both flips, 90-degree rotations, H&E stain jitter, mild intensity, blur and JPEG artefacts)",
    )
    num_ops: int = Field(2, ge=0, le=10, description="randaugment: operations applied per image (N)")
    magnitude: int = Field(9, ge=0, le=30, description="randaugment: strength on the 0-30 scale (M)")
    hflip: bool = Field(True, description="flip, randaugment: random horizontal flips")
    vflip: bool = Field(False, description="flip, randaugment: random vertical flips (histology has no up: true)")


class DatasetConfig(_Section):
    """Which dataset, where, and how its images are prepared."""

    name: str = Field("demo", description="a name in the DATASETS registry")
    root: str | None = Field(
        None, description="folder of the dataset (None: the dataset's default, e.g. the demo cache)"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options (e.g. level: L3)")
    image_size: int = Field(224, ge=16, le=4096, description="side of the square network input, pixels")
    train_split: str = "train"
    val_split: str = "valid"
    test_split: str = "test"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    normalization: Literal["encoder", "dataset", "none"] = Field(
        "encoder", description="mean/std: the encoder's (timm config), the dataset's own (e.g. ADP), or none"
    )
    skip_bad: bool = Field(False, description="skip unreadable samples (each logged and counted) instead of failing")
    mpp: float | None = Field(
        None,
        gt=0,
        description="microns per pixel of the network input, recorded in model.pt so predict reads slides at it; "
        "the slides dataset with options.mpp sets it (options.mpp * options.size / image_size)",
    )
    stain_normalize: str | None = Field(
        None,
        description="stain normalisation to the stains of this H&E image or folder of images (fitted once; the "
        "reference travels in model.pt, so evaluate and predict apply the same; slide patches are mapped with "
        "statistics fitted once per slide, loose images with their own)",
    )
    stain_method: Literal["macenko", "reinhard"] = Field(
        "macenko",
        description="with stain_normalize: macenko (stain vectors and concentration maxima) or reinhard (L*a*b* "
        "means and standard deviations)",
    )

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        return _registered(DATASETS, v)


class EncoderConfig(_Section):
    """The backbone: a name in ENCODERS or any timm model name."""

    name: str = Field("resnet18", description="ENCODERS name or timm model name (tresnet_m, resnet50, ...)")
    pretrained: bool = Field(False, description="timm's own pretrained weights (needs network)")
    weights: str | None = Field(None, description="local weights file (state dict or checkpoint)")
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the model factory")


class ContrastiveConfig(_Section):
    """Stage 1: encoder + mixture density network trained with NLL + lambda * PCL (paper Eq. 4)."""

    epochs: int = Field(
        80, ge=0, le=MAX_EPOCHS, description="two-stage: passes over the training set of the contrastive stage"
    )
    batch_size: int = Field(
        128, ge=2, le=MAX_BATCH, description="images per batch (2x views); joint: its training batches"
    )
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    tau: float = Field(0.2, gt=0, description="temperature of Eq. 3")
    lambda_: float = Field(0.3, ge=0, alias="lambda", description="weight of the contrastive term (Eq. 4)")
    nll_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the likelihood term (1: the paper; 0: the contrastive term alone, an ablation)",
    )
    alpha: float = Field(0.5, ge=0, le=1, description="overlap threshold for positives (Eq. 3)")
    overlap: str = Field("jaccard", description="a name in OVERLAPS")
    similarity: str = Field("correlation", description="a name in SIMILARITIES")
    likelihood: str = Field(
        "responsibility",
        description="a name in LIKELIHOODS (NLL reading, docs/math.md s.3; responsibility measured better than "
        "density in benchmarks/evidence)",
    )
    mdn_hidden: tuple[Width, Width] = Field((2048, 128), description="MDN hidden layer widths")
    mdn_input: Literal["unit", "standardized"] = Field(
        "unit",
        description="what the MDN reads: the unit-norm h (the paper) or h standardised per feature over the batch "
        "(a deviation: breaks the identical-mixture start, docs/math.md s.1)",
    )
    component_means: Literal["diagonal", "learned_directions"] = Field(
        "diagonal",
        description="where component k's mean lies: mu_k 1 on the diagonal (the paper; the density then sees h only "
        "through sum_i h_i) or mu_k sqrt(n) u_k along a learned class direction (a deviation, docs/math.md s.2b; "
        "needs a similarity that supports it: bhattacharyya)",
    )
    mdn_input_gain: float = Field(
        1.0,
        gt=0,
        description="factor on the MDN's first-layer initial weights; h is unit-norm, so with 1.0 the MDN's outputs "
        "barely vary between samples at the start and every similarity is ~1 (PCL without gradient); sqrt(H) gives "
        "the first layer unit-scale inputs (benchmarks/evidence)",
    )

    similarity_form: Literal["value", "log"] = Field(
        "value",
        description="what Eq. 3 divides by tau: the similarity (the paper, in [0, 1]) or its log (exact in the log "
        "domain, in (-inf, 0]: a wider contrast between pairs; docs/math.md s.7b)",
    )
    tau_learnable: bool = Field(
        False,
        description="learn the temperature from tau, bounded in [tau_min, tau_max] (a logit scale, docs/math.md s.7c)",
    )
    tau_min: float = Field(0.01, gt=0, description="tau_learnable: the lowest temperature (CLIP's bound)")
    tau_max: float = Field(1.0, gt=0, description="tau_learnable: the highest temperature")
    tau_gain: float = Field(
        1.0,
        gt=0,
        description="tau_learnable: how many times faster than the network's weights the temperature's parameter "
        "moves (Adam moves each parameter by about lr per step; 100 at lr 1e-3 lets it cross its range in ~100 "
        "steps)",
    )
    variance_floor: float = Field(
        1.0, gt=0, description="smallest component variance (the paper: 1); var = floor + scale (ELU(a) + 1)"
    )
    variance_scale: float = Field(
        1.0, gt=0, description="factor on the learned part of the variance (the paper: 1; 0.1 with floor 0.1: sharper)"
    )
    covariance: Literal["isotropic", "shared", "fixed"] = Field(
        "isotropic",
        description="isotropic: var_k I per component (the paper); shared: one variance per sample for all its "
        "components; fixed: floor + scale for every component (no learned spread); docs/math.md s.2d",
    )
    mean_dim: int = Field(
        1,
        ge=1,
        le=MAX_WIDTH,
        description="numbers per component mean: 1 (the paper, mu_k 1) or d block means, constant on d blocks of "
        "coordinates (docs/math.md s.2c; needs similarity: bhattacharyya)",
    )

    @field_validator("overlap")
    @classmethod
    def _known_overlap(cls, v: str) -> str:
        return _registered(OVERLAPS, v)

    @field_validator("similarity")
    @classmethod
    def _known_similarity(cls, v: str) -> str:
        return _registered(SIMILARITIES, v)

    @field_validator("likelihood")
    @classmethod
    def _known_likelihood(cls, v: str) -> str:
        return _registered(LIKELIHOODS, v)

    @model_validator(mode="after")
    def _directions_need_a_similarity_that_supports_them(self) -> ContrastiveConfig:
        if self.component_means == "learned_directions" and self.similarity == "correlation":
            raise ValueError(
                "component_means: learned_directions needs a similarity that supports mean directions; the "
                "correlation kernel assumes the diagonal: set contrastive.similarity=bhattacharyya"
            )
        if self.mean_dim > 1 and self.similarity == "correlation":
            raise ValueError(
                f"mean_dim: {self.mean_dim} needs a similarity that supports block means; the correlation kernel "
                "assumes one number per mean: set contrastive.similarity=bhattacharyya"
            )
        if self.mean_dim > 1 and self.component_means == "learned_directions":
            raise ValueError("mean_dim > 1 and component_means: learned_directions do not combine: choose one")
        fields = type(self).model_fields
        loose = [k for k in ("tau_min", "tau_max", "tau_gain") if getattr(self, k) != fields[k].default]
        if loose and not self.tau_learnable:
            raise ValueError(
                f"{', '.join(loose)} changed but tau_learnable is false: these keys bound a learned temperature; set "
                "contrastive.tau_learnable=true or remove them"
            )
        if self.tau_learnable and not self.tau_min < self.tau < self.tau_max:
            raise ValueError(
                f"tau_learnable needs tau_min < tau < tau_max, got {self.tau_min}, {self.tau}, {self.tau_max}: the "
                "temperature starts at tau inside its bounds"
            )
        return self


class ClassifierConfig(_Section):
    """Stage 2: a linear head on the (frozen) encoder trained with a multi-label loss."""

    epochs: int = Field(
        40, ge=0, le=MAX_EPOCHS, description="two-stage: passes over the training set of the classifier stage"
    )
    batch_size: int = Field(
        64,
        ge=1,
        le=MAX_BATCH,
        description="images per batch (joint: of the validation passes only); 64 by measurement: on the defaults "
        "study's 1000-image sets 128 halved the updates of a short run and cost 10 mAP (benchmarks/evidence)",
    )
    lr: float = Field(1e-3, gt=0, description="the head's learning rate (the peak under onecycle)")
    weight_decay: float = Field(0.0, ge=0)
    loss: Literal["bce", "focal", "asl"] = Field(
        "bce",
        description="bce (binary cross-entropy), focal (Lin et al., focal_gamma), asl (asymmetric loss, Ridnik et "
        "al.: gamma_neg, gamma_pos, clip; the published values are for highly imbalanced data)",
    )
    focal_gamma: float = Field(2.0, ge=0, description="focal: the focusing exponent on positives and negatives")
    gamma_neg: float = Field(4.0, ge=0, description="asl: focusing exponent on negatives")
    gamma_pos: float = Field(0.0, ge=0, description="asl: focusing exponent on positives")
    clip: float = Field(0.05, ge=0, lt=1, description="asl: probability margin shifted off the negatives")
    encoder_lr: float = Field(0.0, ge=0, description="0: frozen encoder (the paper); > 0: fine-tune it at this lr")
    cache_features: bool = Field(True, description="compute frozen features once (only without augmentation)")
    augment: bool = Field(True, description="augment in stage 2 too (the paper); disables the feature cache")


class CheckpointConfig(_Section):
    """How often and how many checkpoints are written."""

    keep_last: int = Field(3, ge=1, le=1000, description="rolling checkpoints kept")
    every_n_iterations: int = Field(
        0, ge=0, le=2**31, description="also save mid-epoch every N iterations (0: end of epoch)"
    )


class RunConfig(_Section):
    """A whole ProbMCL run."""

    mode: Literal["two-stage", "asl", "joint"] = Field(
        "asl",
        description="asl (encoder + head end to end with ASL; the default, measured best in benchmarks/evidence), "
        "two-stage (the paper: contrastive stage, then a head on the frozen encoder), joint (ASL + NLL + PCL)",
    )
    epochs: int = Field(
        120,
        ge=0,
        le=MAX_EPOCHS,
        description="asl, joint: the run's length in passes over the training set (two-stage reads "
        "contrastive.epochs and classifier.epochs instead)",
    )
    lr_schedule: Literal["warmup-cosine", "onecycle", "cosine", "constant"] = Field(
        "warmup-cosine",
        description="learning rate over each stage, stepped per iteration: warmup-cosine (linear warm-up from 0 over "
        "5 % of the steps, then cosine to 0), onecycle (OneCycleLR, 20 % warm-up, the ASL training script's), cosine "
        "(cosine annealing from the lr to 0, no warm-up), constant",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of every random stream (torch takes up to 2**63 - 1)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    output_dir: str = Field("runs/run", description="run folder (config, checkpoints, metrics, logs)")
    workers: int = Field(2, ge=0, le=256)
    threads: int | None = Field(
        0,
        ge=0,
        le=1024,
        description="CPU intra-op threads of each training process (torch.set_num_threads); 0 or null: the cores "
        "left after the DataLoader workers, at least 1 (probmcl_med.threads)",
    )
    amp: bool = Field(True, description="mixed precision on GPU (bf16 where supported, else fp16 + GradScaler)")
    compile: bool = Field(False, description="torch.compile the encoder")
    deterministic: bool = Field(False, description="deterministic algorithms (bitwise-reproducible CPU runs)")
    log_every: int = Field(10, ge=1, le=2**31, description="iterations between metric log lines")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    def to_dict(self, every_key: bool = False) -> dict[str, Any]:
        """Plain, YAML-ready dict (aliases such as ``lambda`` used as keys) of the keys this run's mode reads.

        Args:
            every_key: also the keys the mode does not read (:data:`UNUSED_KEYS`).
        """
        data = self.model_dump(mode="json", by_alias=True)
        if not every_key:
            for dotted in UNUSED_KEYS[self.mode]:
                section, _, key = dotted.rpartition(".")
                (data[section] if section else data).pop(key, None)
        return data

    def to_yaml(self) -> str:
        """The resolved config as YAML: the keys this run's mode reads (what ``--print-config`` shows)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


UNUSED_KEYS: dict[str, tuple[str, ...]] = {
    "two-stage": ("epochs",),
    "asl": ("contrastive", "classifier.epochs", "classifier.cache_features"),
    "joint": (
        "contrastive.epochs",
        "contrastive.weight_decay",
        "classifier.epochs",
        "classifier.augment",
        "classifier.cache_features",
    ),
}
"""Per mode, the keys its training never reads (hidden from ``--print-config``, ``config.yaml`` and the bundle).

two-stage reads the stage lengths ``contrastive.epochs`` and ``classifier.epochs``; the one-stage modes read the
run's length ``epochs``. asl trains encoder + head end to end (no contrastive term); joint trains them with the MDN
on two views per image, in ``contrastive.batch_size`` batches, with the classifier section's optimiser settings.
"""

STAGE_EPOCH_KEYS = ("contrastive.epochs", "classifier.epochs")


def with_run_length(config: RunConfig, epochs: int) -> RunConfig:
    """``--epochs N``: the run's length in passes over the training set, whatever the mode.

    asl and joint train for ``epochs = N``; two-stage divides N between its stages in the config's ratio
    ``contrastive.epochs : classifier.epochs`` (the contrastive share rounded to the nearest pass, the classifier
    stage the rest), so ``--epochs 12`` on the paper's 80 : 40 gives 8 + 4.

    Raises:
        ConfigError: N out of range, a length the mode cannot train (:func:`check_epochs`), or two-stage with both
            stage lengths 0 (no ratio to divide by).
    """
    if not 0 <= epochs <= MAX_EPOCHS:
        raise ConfigError(f"--epochs {epochs}: give the number of passes over the training set (1 to {MAX_EPOCHS})")
    if config.mode != "two-stage":
        config = config.model_copy(update={"epochs": epochs})
        check_epochs(config, f"--epochs {epochs}")
        return config
    first, second = config.contrastive.epochs, config.classifier.epochs
    if first + second == 0:
        raise ConfigError(
            "--epochs: mode two-stage divides the run in the ratio contrastive.epochs : classifier.epochs, and both "
            "are 0; set them (e.g. --set contrastive.epochs=2 --set classifier.epochs=1)"
        )
    contrastive = int(epochs * first / (first + second) + 0.5)
    config = config.model_copy(
        update={
            "contrastive": config.contrastive.model_copy(update={"epochs": contrastive}),
            "classifier": config.classifier.model_copy(update={"epochs": epochs - contrastive}),
        }
    )
    check_epochs(config, f"--epochs {epochs}")
    return config


def check_epochs(config: RunConfig, source: str) -> None:
    """Refuse a length the mode cannot train: two-stage needs classifier epochs (contrastive.epochs=0 skips stage
    1), the one-stage modes need ``epochs``; without this the run would fail after its first stage, or train nothing.
    """
    if config.mode == "two-stage" and config.classifier.epochs == 0:
        split = f" (split {config.contrastive.epochs} + 0)" if source.startswith("--epochs") else ""
        raise ConfigError(
            f"{source}: classifier.epochs=0{split}: mode two-stage trains a classifier stage after the contrastive "
            "one; give it 1 epoch or more (contrastive.epochs=0 skips stage 1)"
        )
    if config.mode != "two-stage" and config.epochs == 0:
        raise ConfigError(f"{source}: epochs=0: mode {config.mode} trains for 'epochs' passes; give 1 or more")


def check_stage_epochs(config: RunConfig, source: str) -> None:
    """Refuse a one-stage run whose config sets the two-stage stage lengths but not its own ``epochs``.

    Such a config was written when asl and joint trained for contrastive.epochs + classifier.epochs; read now, it
    would silently train for the default length instead, so it is a one-line error saying what to set.
    """
    if config.mode == "two-stage" or "epochs" in config.model_fields_set:
        return
    stale = [
        key for key in STAGE_EPOCH_KEYS if key.split(".")[1] in getattr(config, key.split(".")[0]).model_fields_set
    ]
    if stale:
        total = config.contrastive.epochs + config.classifier.epochs
        raise ConfigError(
            f"{source}: {' and '.join(stale)} {'are stage lengths' if len(stale) > 1 else 'is a stage length'} of "
            f"mode two-stage, which mode {config.mode} does not read; its length is 'epochs' (passes over the "
            f"training set): set epochs (e.g. epochs: {total} for the old contrastive + classifier budget)"
        )
