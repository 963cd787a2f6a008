"""The sections of a run config: one validated pydantic model each, with its own defaults and docs.

The sections every mode reads (``dataset``, ``encoder``, ``checkpoint``) are one model each. The two sections whose
keys depend on the mode are a family of models, one per mode, built from shared parts, so that each mode's config
holds exactly the keys that mode reads (:mod:`probmcl_med.config.schema` puts them together):

=================  ===================================  ===================================================
section            model                                mode
=================  ===================================  ===================================================
``contrastive``    :class:`ContrastiveStageConfig`      two-stage (stage 1: its length, optimiser, objective)
                   :class:`JointContrastiveConfig`      joint (its batches, the MDN's lr, the objective)
``classifier``     :class:`LinearHeadConfig`            two-stage (stage 2), probe: a head on a frozen or
                                                        fine-tuned encoder, reading unit-norm features
                   :class:`EndToEndHeadConfig`          asl: encoder + head trained together on raw features
                   :class:`JointHeadConfig`             joint: the head's lr and loss, validation batches
=================  ===================================  ===================================================

Unknown keys and bad values are rejected; names that must be registered (similarity, overlap, likelihood, dataset)
are checked against the registries, with close matches.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from probmcl_med.registry import DATASETS, LIKELIHOODS, OVERLAPS, SIMILARITIES, Registry

MAX_EPOCHS = 100_000
MAX_BATCH = 1_048_576
MAX_WIDTH = 65_536
"""Upper bounds that no real run reaches: a value beyond them is a typo (``epochs=1e23``), refused at validation."""

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated, no inf/nan."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False)


BUILT_IN_NAMES: dict[str, frozenset[str]] = {
    "dataset": frozenset({"demo", "csv", "adp", "coco", "slides"}),
    "overlap": frozenset({"jaccard", "cosine"}),
    "similarity": frozenset({"correlation", "bhattacharyya"}),
    "likelihood": frozenset({"density", "responsibility"}),
}
"""The names the built-in modules register, per registry kind, accepted without importing those modules (they import
torch): a config is validated, and a wrong command refused, before torch is (``benchmarks/bench_refusal.py``). Any
other name is looked up in the registry, after the validator imports the module that registers the built-ins.
``tests/test_fast_refusals.py`` checks these against the registries."""


def _registered(registry: Registry, value: str) -> str:
    """``value`` when it is a built-in name (:data:`BUILT_IN_NAMES`) or registered (after importing the built-ins'
    module, :func:`_import_built_ins`), else a ValueError with close matches."""
    if value in BUILT_IN_NAMES.get(registry.kind, frozenset()):
        return value
    _import_built_ins(registry.kind)
    if value not in registry:
        raise ValueError(registry.unknown_message(value).split(" (plugins are loaded")[0])
    return value


def _import_built_ins(kind: str) -> None:
    """Import the module that registers the built-in names of the registry ``kind`` (written out, not by a string,
    so that the layer contracts see each import)."""
    if kind == "dataset":
        import probmcl_med.data.datasets
    elif kind == "overlap":
        import probmcl_med.core.overlaps
    elif kind == "similarity":
        import probmcl_med.core.similarities
    elif kind == "likelihood":
        import probmcl_med.core.likelihoods  # noqa: F401


# ---------------------------------------------------------------------------------------------------------------------
# Sections every mode reads
# ---------------------------------------------------------------------------------------------------------------------


class AugmentConfig(Section):
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


class DatasetConfig(Section):
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
    cache_gb: float | None = Field(
        None,
        ge=0,
        le=4096,
        description="training and validation images kept in memory, decoded and resized once, when they fit in this "
        "many GiB per process (0: never; null: a quarter of the available memory, at most 16; probmcl_med.data.cache)",
    )
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


class EncoderConfig(Section):
    """The backbone: a name in ENCODERS or any timm model name; it returns raw pooled features (B, H)."""

    name: str = Field("resnet18", description="ENCODERS name or timm model name (tresnet_m, resnet50, ...)")
    pretrained: bool = Field(False, description="timm's own pretrained weights (needs network)")
    weights: str | None = Field(None, description="local weights file (state dict or checkpoint)")
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the model factory")


class CheckpointConfig(Section):
    """How often and how many checkpoints are written."""

    keep_last: int = Field(3, ge=1, le=1000, description="rolling checkpoints kept (over every stage of the run)")
    every_n_iterations: int = Field(
        0, ge=0, le=2**31, description="also save mid-epoch every N iterations (0: end of epoch)"
    )


# ---------------------------------------------------------------------------------------------------------------------
# The contrastive section: the objective (paper Eq. 3-4) and what each mode adds
# ---------------------------------------------------------------------------------------------------------------------


class ObjectiveConfig(Section):
    """NLL + lambda * PCL (paper Eq. 4) on two views per image, and the mixture density network that reads h."""

    batch_size: int = Field(128, ge=2, le=MAX_BATCH, description="images per step (2x views)")
    lr: float = Field(
        1e-4, gt=0, description="Adam's learning rate of the encoder and the MDN (the peak under onecycle)"
    )
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
    def _options_fit_together(self) -> ObjectiveConfig:
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


class ContrastiveStageConfig(ObjectiveConfig):
    """two-stage, stage 1: encoder + MDN trained with NLL + lambda * PCL for ``epochs`` passes."""

    epochs: Epochs = Field(
        80, description="passes over the training set of the contrastive stage (a head without it: mode probe)"
    )
    weight_decay: float = Field(0.0, ge=0, description="Adam's weight decay of the encoder and the MDN")


class JointContrastiveConfig(ObjectiveConfig):
    """joint: the contrastive objective added to the head's loss, on the batches of this section (the encoder's
    learning rate is ``classifier.encoder_lr`` when that is set)."""


# ---------------------------------------------------------------------------------------------------------------------
# The classifier section: a linear head and its multi-label loss, and what each mode adds
# ---------------------------------------------------------------------------------------------------------------------


AUGMENT = (
    "augmented training views (the paper), else the deterministic transform (then a frozen encoder's features are "
    "computed once)"
)


class HeadConfig(Section):
    """A linear head trained with a multi-label loss (BCE, focal or ASL)."""

    batch_size: int = Field(
        64,
        ge=1,
        le=MAX_BATCH,
        description="images per batch; 64 by measurement: on the defaults study's 1000-image sets 128 halved the "
        "updates of a short run and cost 10 mAP (benchmarks/evidence)",
    )
    lr: float = Field(1e-3, gt=0, description="the head's learning rate (the peak under onecycle)")
    weight_decay: float = Field(0.0, ge=0, description="Adam's weight decay of every trained parameter")
    loss: Literal["bce", "focal", "asl"] = Field(
        "bce",
        description="bce (binary cross-entropy), focal (Lin et al., focal_gamma), asl (asymmetric loss, Ridnik et "
        "al.: gamma_neg, gamma_pos, clip; the published values are for highly imbalanced data)",
    )
    focal_gamma: float = Field(2.0, ge=0, description="focal: the focusing exponent on positives and negatives")
    gamma_neg: float = Field(4.0, ge=0, description="asl: focusing exponent on negatives")
    gamma_pos: float = Field(0.0, ge=0, description="asl: focusing exponent on positives")
    clip: float = Field(0.05, ge=0, lt=1, description="asl: probability margin shifted off the negatives")


class LinearHeadConfig(HeadConfig):
    """two-stage's stage 2 and probe: a linear head on the encoder's unit-norm features, the encoder frozen (the
    paper's linear evaluation; features computed once when the stage does not augment) or fine-tuned."""

    epochs: Epochs = Field(40, description="passes over the training set of the classifier stage")
    encoder_lr: float = Field(
        0.0, ge=0, description="0: the encoder is frozen (the paper); > 0: fine-tune it at this lr"
    )
    augment: bool = Field(True, description=AUGMENT)


class EndToEndHeadConfig(HeadConfig):
    """asl: the encoder and a head on its raw pooled features, trained together with the classifier loss."""

    encoder_lr: float | None = Field(None, gt=0, description="the encoder's learning rate (null: classifier.lr)")
    augment: bool = Field(True, description=AUGMENT)


class JointHeadConfig(HeadConfig):
    """joint: the head on the unit-norm features the MDN reads; it trains on the contrastive section's batches."""

    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="images per validation batch (training batches: "
                            "contrastive.batch_size)")  # fmt: skip
    encoder_lr: float | None = Field(None, gt=0, description="the encoder's learning rate (null: contrastive.lr)")
