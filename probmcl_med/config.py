"""The run configuration: one validated schema for a whole ProbMCL run, loaded from YAML with ``--set`` overrides.

A config file names every choice a run makes (dataset, encoder, the contrastive and classifier stages, output folder,
device, seed, workers, AMP). Unknown keys and bad values are rejected with one line that names the key; names that
must be registered (similarity, overlap, likelihood, dataset) are checked against the registries, with close matches.

Example::

    cfg = load_config("configs/adp.yaml", overrides=["contrastive.tau=0.1", "dataset.root=/data/ADP"])
"""

from __future__ import annotations

import contextlib
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from probmcl_med.errors import ConfigError
from probmcl_med.fileio import atomic_write_text
from probmcl_med.registry import DATASETS, LIKELIHOODS, OVERLAPS, SIMILARITIES, Registry, RegistryError


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


def _registered(registry: Registry, value: str) -> str:
    if value not in registry:
        raise ValueError(registry.unknown_message(value).split(" (plugins are loaded")[0])
    return value


class AugmentConfig(_Section):
    """How training views are augmented: a named policy (probmcl_med.data.augment) and its settings."""

    policy: Literal["none", "flip", "randaugment", "pathology"] = Field(
        "randaugment",
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

    epochs: int = Field(80, ge=0)
    batch_size: int = Field(128, ge=2, description="images per batch (2x views)")
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
    mdn_hidden: tuple[int, int] = Field((2048, 128), description="MDN hidden layer widths")
    mdn_input: Literal["unit", "standardized"] = Field(
        "unit",
        description="what the MDN reads: the unit-norm h (the paper) or h standardised per feature over the batch "
        "(a deviation: breaks the identical-mixture start, docs/math.md s.1)",
    )
    mdn_input_gain: float = Field(
        1.0,
        gt=0,
        description="factor on the MDN's first-layer initial weights; h is unit-norm, so with 1.0 the MDN's outputs "
        "barely vary between samples at the start and every similarity is ~1 (PCL without gradient); sqrt(H) gives "
        "the first layer unit-scale inputs (benchmarks/evidence)",
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


class ClassifierConfig(_Section):
    """Stage 2: a linear head on the (frozen) encoder trained with a multi-label loss."""

    epochs: int = Field(40, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    loss: Literal["bce", "focal", "asl"] = Field(
        "asl",
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

    keep_last: int = Field(3, ge=1, description="rolling checkpoints kept")
    every_n_iterations: int = Field(0, ge=0, description="also save mid-epoch every N iterations (0: end of epoch)")


class RunConfig(_Section):
    """A whole ProbMCL run."""

    mode: Literal["two-stage", "asl", "joint"] = Field(
        "asl",
        description="asl (encoder + head end to end with ASL; the default, measured best in benchmarks/evidence), "
        "two-stage (the paper: contrastive stage, then a head on the frozen encoder), joint (ASL + NLL + PCL)",
    )
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    output_dir: str = Field("runs/run", description="run folder (config, checkpoints, metrics, logs)")
    workers: int = Field(2, ge=0)
    amp: bool = Field(True, description="mixed precision on GPU (bf16 where supported, else fp16 + GradScaler)")
    compile: bool = Field(False, description="torch.compile the encoder")
    deterministic: bool = Field(False, description="deterministic algorithms (bitwise-reproducible CPU runs)")
    log_every: int = Field(10, ge=1, description="iterations between metric log lines")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready dict (aliases such as ``lambda`` used as keys)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------------------------------
# Loading, overrides, errors
# --------------------------------------------------------------------------------------------------------------------


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """All dotted keys of a schema (for did-you-mean on unknown keys)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_schema_keys(annotation, dotted + "."))
    return keys


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first bad key, what is wrong and (for unknown keys) the close matches."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _schema_keys(RunConfig), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        msg = f"unknown key '{key}'{hint}"
    else:
        value = first.get("input")
        detail = first["msg"].removeprefix("Value error, ")
        shown = repr(value) if not isinstance(value, dict) else "a mapping"
        msg = f"bad value {shown} for '{key}': {detail}"
    more = len(err.errors()) - 1
    extra = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {msg}{extra}"


def _field_for(model: type[BaseModel], key: str) -> Any:
    """The pydantic field of ``model`` written ``key`` in a config (its alias or its name), or None."""
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def is_text_key(path: list[str]) -> bool:
    """True when the schema types the key at ``path`` as text (``str`` or ``str | None``)."""
    model: type[BaseModel] = RunConfig
    for i, part in enumerate(path):
        field = _field_for(model, part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(path) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False  # inside a free-form mapping (dataset.options, encoder.options)
            model = annotation
    return annotation is str or set(get_args(annotation)) == {str, type(None)}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a value.

    The value is read as YAML (``1e-4`` -> float, ``[1, 2]`` -> list, ``null`` -> None), except for keys the
    schema types as text (``output_dir``, ``dataset.root``, ``encoder.name``, ...): those keep the text as written,
    so ``--set output_dir=2024`` names the folder ``2024``; ``null`` still unsets an optional one.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set contrastive.tau=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key is empty; write e.g. contrastive.tau=0.1")
    path = key.split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if is_text_key(path):
        if value is not None and not isinstance(value, str):
            value = raw.strip()
    elif isinstance(value, str):
        # YAML reads 1e-4 as a string; numbers should be numbers.
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else int(value)
    return path, value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating sections as needed (validation comes later)."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def config_search_paths() -> list[Path]:
    """Where named configs are looked up: ./configs of the working directory, then the installed package's."""
    paths = [Path.cwd() / "configs"]
    try:
        packaged = Path(str(resources.files("probmcl_med.configs")))
        paths.append(packaged)
    except (ModuleNotFoundError, TypeError):
        pass
    return paths


def find_named_config(name: str) -> Path | None:
    """``configs/NAME.yaml`` from the working directory or the installed package, or None."""
    for folder in config_search_paths():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def available_configs() -> list[str]:
    """Names of the configs that ``--dataset NAME`` can pick."""
    names: set[str] = set()
    for folder in config_search_paths():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or non-mapping content is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        named = find_named_config(str(path)) if path.suffix == "" else None
        if named is None:
            options = ", ".join(available_configs()) or "none"
            raise ConfigError(f"config file {path} not found (named configs available: {options})")
        path = named
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {type(data).__name__}")
    return data


def _drop_removed_keys(data: dict[str, Any], source: str) -> None:
    """Accept the removed ``contrastive.latent_dim`` at its old default (null, in earlier resolved configs) only.

    n, the dimension of z, is always the encoder's feature width: the likelihood is evaluated at z = h(x)
    (docs/math.md s.3), so there is nothing to choose.
    """
    section = data.get("contrastive")
    if isinstance(section, dict) and "latent_dim" in section:
        if section["latent_dim"] is not None:
            raise ConfigError(
                f"{source}: 'contrastive.latent_dim' was removed: n is always the encoder's feature width, since the "
                "likelihood is evaluated at z = h(x) (docs/math.md s.3); delete the key"
            )
        section.pop("latent_dim")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file (or defaults), then ``--set`` overrides.

    Args:
        path: YAML file, or the name of a config in configs/ (``adp``), or None for the defaults.
        overrides: ``a.b=value`` strings applied in order after the file.
        base: a dict to start from instead of a file (e.g. a resolved config read from a checkpoint).

    Raises:
        ConfigError: unknown key (with close matches), bad value, unregistered name, missing file.
    """
    data: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
    for text in overrides or []:
        key_path, value = parse_override(text)
        apply_override(data, key_path, value)
    if overrides:
        source = f"{source} (with --set)"
    _drop_removed_keys(data, source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    except RegistryError as err:
        raise ConfigError(f"{source}: {err}") from None


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically (temporary file + rename)."""
    return atomic_write_text(Path(path), config.to_yaml())
