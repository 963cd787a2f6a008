"""The run config: a pydantic discriminated union on ``mode``, one model per training mode.

Each mode's model holds exactly the keys that mode reads, with its own defaults and docs (the sections are in
:mod:`probmcl_med.config.sections`); a key of another mode is not in it, so ``--print-config``, ``RUN/config.yaml``
and the config stored in ``model.pt`` (all :meth:`RunBase.to_dict`) show only what the run used.

=============  ======================================================================================================
mode           reads, besides the keys every mode reads (:class:`RunBase`)
=============  ======================================================================================================
``asl``        ``epochs``; ``classifier``: the encoder and a head on raw pooled features, end to end (the default)
``two-stage``  ``contrastive`` (stage 1 and its length) then ``classifier`` (stage 2, a head on unit-norm features)
``probe``      ``classifier`` of two-stage alone: a head on the configured encoder, frozen or fine-tuned
``joint``      ``epochs``; ``contrastive`` (objective, batches, MDN lr) and ``classifier`` (the head), in one stage
=============  ======================================================================================================

The run's length is ``epochs`` in the one-stage modes and the stage lengths ``contrastive.epochs`` and
``classifier.epochs`` in two-stage; :func:`with_epochs` applies ``--epochs N`` whatever the mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.fields import FieldInfo

from probmcl_med.config.sections import (
    MAX_EPOCHS,
    CheckpointConfig,
    ContrastiveStageConfig,
    DatasetConfig,
    EncoderConfig,
    EndToEndHeadConfig,
    Epochs,
    JointContrastiveConfig,
    JointHeadConfig,
    LinearHeadConfig,
    Section,
)
from probmcl_med.errors import ConfigError


class RunBase(Section):
    """The keys every mode reads: the data, the encoder, the schedule's shape, the machine and the run folder."""

    mode: str = Field("asl", description="the training mode (asl, two-stage, probe, joint)")
    lr_schedule: Literal["warmup-cosine", "onecycle", "cosine", "constant"] = Field(
        "onecycle",
        description="learning rate over each stage, stepped per iteration: onecycle (the default: OneCycleLR, 20 % "
        "warm-up, the ASL training script's; chosen by the issue-20 hold-out study, README 'Which mode, loss and "
        "augmentation'), warmup-cosine (linear warm-up from 0 over 5 % of the steps, then cosine to 0), cosine "
        "(cosine annealing from the lr to 0, no warm-up), constant",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of every random stream (torch takes up to 2**63 - 1)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    output_dir: str = Field("runs/run", description="run folder (config, checkpoints, metrics, logs)")
    workers: int = Field(2, ge=0, le=256, description="DataLoader worker processes")
    threads: int | None = Field(
        0,
        ge=0,
        le=1024,
        description="CPU intra-op threads of each training process (torch.set_num_threads); 0 or null: the cores "
        "left after the DataLoader workers, at least 1, at most OMP_NUM_THREADS where set "
        "(probmcl_med.threads)",
    )
    amp: bool = Field(True, description="mixed precision on GPU (bf16 where supported, else fp16 + GradScaler)")
    compile: bool = Field(False, description="torch.compile the encoder")
    deterministic: bool = Field(False, description="deterministic algorithms (bitwise-reproducible CPU runs)")
    log_every: int = Field(10, ge=1, le=2**31, description="iterations between metric log lines")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready dict of every key of this mode (aliases such as ``lambda`` as keys)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        """The resolved config as YAML (what ``--print-config`` shows and ``RUN/config.yaml`` holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


class AslConfig(RunBase):
    """``mode: asl``: the encoder and a linear head on its raw pooled features, trained end to end with the
    classifier loss, for ``epochs`` passes."""

    mode: Literal["asl"] = "asl"
    epochs: Epochs = Field(120, description="passes over the training set")
    classifier: EndToEndHeadConfig = Field(default_factory=EndToEndHeadConfig)


class TwoStageConfig(RunBase):
    """``mode: two-stage`` (the paper): the contrastive stage (encoder + MDN, NLL + lambda PCL), then a linear head
    on the encoder's unit-norm features, each stage for its own number of passes."""

    mode: Literal["two-stage"] = "two-stage"
    contrastive: ContrastiveStageConfig = Field(default_factory=ContrastiveStageConfig)
    classifier: LinearHeadConfig = Field(default_factory=LinearHeadConfig)


class ProbeConfig(RunBase):
    """``mode: probe``: two-stage's classifier stage alone, on the encoder as configured (its initial or
    pretrained weights): a linear probe with the encoder frozen, or a fine-tune with ``classifier.encoder_lr``."""

    mode: Literal["probe"] = "probe"
    classifier: LinearHeadConfig = Field(default_factory=LinearHeadConfig)


class JointConfig(RunBase):
    """``mode: joint``: the encoder, the MDN and the head in one stage, head loss + NLL + lambda PCL on two views per
    image, for ``epochs`` passes."""

    mode: Literal["joint"] = "joint"
    epochs: Epochs = Field(120, description="passes over the training set")
    contrastive: JointContrastiveConfig = Field(default_factory=JointContrastiveConfig)
    classifier: JointHeadConfig = Field(default_factory=JointHeadConfig)


RunConfig = AslConfig | TwoStageConfig | ProbeConfig | JointConfig
"""A validated run config: the model of its mode."""

MODE_CONFIGS: dict[str, type[RunBase]] = {
    "asl": AslConfig,
    "two-stage": TwoStageConfig,
    "probe": ProbeConfig,
    "joint": JointConfig,
}
"""Every mode and its model, in the order messages list them (a plugin adds its own: :func:`add_mode`)."""

DEFAULT_MODE = "asl"

_ADAPTER: dict[tuple[str, ...], TypeAdapter[Any]] = {}


def run_config_adapter() -> TypeAdapter[Any]:
    """Validates a plain mapping into the model its ``mode`` names: the discriminated union of every mode's model
    (the mapping must have ``mode``)."""
    modes = tuple(MODE_CONFIGS)
    if modes not in _ADAPTER:
        union = Union[tuple(MODE_CONFIGS.values())]  # a union built from the registered models
        _ADAPTER.clear()
        _ADAPTER[modes] = TypeAdapter(Annotated[union, Field(discriminator="mode")])
    return _ADAPTER[modes]


# ---------------------------------------------------------------------------------------------------------------------
# Which keys each mode reads
# ---------------------------------------------------------------------------------------------------------------------


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted key of a model, sections and their keys (``contrastive``, ``contrastive.tau``, ...)."""
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{field.alias or name}"
        yield dotted
        section = _section_model(field.annotation)
        if section is not None:
            yield from schema_keys(section, dotted + ".")


MODE_KEYS: dict[str, frozenset[str]] = {mode: frozenset(schema_keys(model)) for mode, model in MODE_CONFIGS.items()}
"""Per mode, every dotted key its model holds."""

ALL_KEYS: set[str] = set().union(*MODE_KEYS.values())
"""Every key some mode holds (a key outside it is a typo)."""


def add_mode(config: type[RunBase]) -> str:
    """Make ``config`` a mode (its ``mode`` field a ``Literal`` of the mode's name); returns the name.

    Raises:
        ValueError: ``mode`` is not a one-name ``Literal``, or the name is another model's.
    """
    names = get_args(config.model_fields["mode"].annotation)
    if len(names) != 1 or config.model_fields["mode"].default != names[0]:
        raise ValueError(f"{config.__name__}: declare mode: Literal['name'] = 'name' (one name, as its default)")
    name = str(names[0])
    if MODE_CONFIGS.get(name, config) is not config:
        raise ValueError(f"mode {name!r} is already {MODE_CONFIGS[name].__name__}'s; name yours otherwise")
    MODE_CONFIGS[name] = config
    MODE_KEYS[name] = frozenset(schema_keys(config))
    ALL_KEYS.update(MODE_KEYS[name])
    return name


def remove_mode(name: str) -> None:
    """Forget a mode :func:`add_mode` added (tests and interactive sessions; the built-in modes stay)."""
    if name in ("asl", "two-stage", "probe", "joint"):
        raise ValueError(f"mode {name!r} is built in")
    MODE_CONFIGS.pop(name, None)
    MODE_KEYS.pop(name, None)
    ALL_KEYS.clear()
    ALL_KEYS.update(*MODE_KEYS.values())


def is_section(key: str) -> bool:
    """Whether a dotted key names a section (a nested model) in some mode."""
    for model in MODE_CONFIGS.values():
        node: type[BaseModel] | None = model
        for part in key.split("."):
            field = _field(node, part) if node is not None else None
            node = None if field is None else _section_model(field.annotation)
        if node is not None:
            return True
    return False


def _field(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def modes_reading(key: str) -> list[str]:
    """The modes whose config holds the dotted ``key``."""
    return [mode for mode, keys in MODE_KEYS.items() if key in keys]


def field_info(mode: str, path: list[str]) -> FieldInfo | None:
    """The pydantic field the ``mode``'s model has at ``path``, or None (unknown, or inside a free-form mapping)."""
    node: type[BaseModel] | None = MODE_CONFIGS[mode]
    field = None
    for part in path:
        field = _field(node, part) if node is not None else None
        if field is None:
            return None
        node = _section_model(field.annotation)
    return field


def field_annotation(mode: str, path: list[str]) -> Any:
    """The type the ``mode``'s model gives the key at ``path``, or None."""
    field = field_info(mode, path)
    return None if field is None else field.annotation


def same_meaning(key: str, mode: str, other: str) -> bool:
    """Whether two modes hold the dotted ``key`` with the same type, constraints, default and description (a
    ``--set mode=`` switch keeps such keys and drops the others: ``classifier.encoder_lr`` is 0 for a frozen encoder
    in two-stage, and null for "the head's lr" in asl)."""
    a, b = field_info(mode, key.split(".")), field_info(other, key.split("."))
    if a is None or b is None:
        return False
    if _section_model(a.annotation) is not None and _section_model(b.annotation) is not None:
        return True  # a section: its keys are judged one by one
    return (repr(a.annotation), a.metadata, a.description, repr(a.default)) == (
        repr(b.annotation),
        b.metadata,
        b.description,
        repr(b.default),
    )


# ---------------------------------------------------------------------------------------------------------------------
# The run's length
# ---------------------------------------------------------------------------------------------------------------------


def length_keys(mode: str) -> tuple[str, ...]:
    """The keys that set a mode's run length: ``epochs``, else its sections' ``epochs`` in schema order
    (two-stage: ``contrastive.epochs``, ``classifier.epochs``; probe: ``classifier.epochs``)."""
    if "epochs" in MODE_KEYS[mode]:
        return ("epochs",)
    return tuple(k for k in schema_keys(MODE_CONFIGS[mode]) if k.count(".") == 1 and k.endswith(".epochs"))


def with_epochs(config: RunConfig, epochs: int, stage: str = "all") -> RunConfig:
    """``--epochs N``: the length, in passes over the training set, of what the command trains.

    The one-stage modes train ``N`` epochs. two-stage: with ``stage`` (``--stage contrastive|classifier``) that
    stage trains ``N``; otherwise ``N`` is divided between the stages in the config's ratio ``contrastive.epochs :
    classifier.epochs``, each stage at least 1 (``--epochs 12`` on the paper's 80 : 40 gives 8 + 4, ``--epochs 2``
    on the demo's 3 : 30 gives 1 + 1).

    Raises:
        ConfigError: N out of range, or below 2 for both stages of two-stage (the message says what to set).
    """
    if not 1 <= epochs <= MAX_EPOCHS:
        raise ConfigError(f"--epochs {epochs}: give the number of passes over the training set (1 to {MAX_EPOCHS})")
    keys = length_keys(config.mode)
    if f"{stage}.epochs" in keys:
        return _set(config, f"{stage}.epochs", epochs)
    if len(keys) == 1:
        return _set(config, keys[0], epochs)
    sets = " ".join(f"--set {k}=1" for k in keys)
    if len(keys) != 2 or epochs < 2:
        raise ConfigError(
            f"--epochs {epochs}: mode {config.mode} trains {len(keys)} stages of at least 1 pass each; give --epochs "
            f"{len(keys)} or more, or set the stages' lengths ({sets})"
        )
    first, second = (_get(config, k) for k in keys)
    share = min(max(1, int(epochs * first / (first + second) + 0.5)), epochs - 1)
    return _set(_set(config, keys[0], share), keys[1], epochs - share)


def _get(config: RunConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _set(config: RunConfig, dotted: str, value: Any) -> Any:
    """A copy of ``config`` with the dotted key set to ``value`` (validated). The keys the config was given keep
    counting as given, and only they (``model_fields_set``: training chooses its loader workers unless ``workers``
    was given)."""
    data = config.model_dump(mode="json", by_alias=True, exclude_unset=True)
    node = data
    *sections, last = dotted.split(".")
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value
    return run_config_adapter().validate_python(data)


# ---------------------------------------------------------------------------------------------------------------------
# What a resume may change
# ---------------------------------------------------------------------------------------------------------------------

RESUME_MAY_CHANGE = frozenset(
    {
        "output_dir",
        "device",
        "workers",
        "threads",
        "compile",
        "deterministic",
        "log_every",
        "dataset.root",
        "dataset.cache_gb",
        "checkpoint.keep_last",
        "checkpoint.every_n_iterations",
    }
)
"""The keys a ``--resume`` may give other values than the run had: where and how fast it runs, how often it logs and
saves, where the data lies. Every other key shapes the optimisation or its schedule (the data, the encoder, the seed,
the losses, the learning rates, the lengths), so a resume that changes one of a stage that has begun is refused
(:mod:`probmcl_med.engine.resume`); a stage's length may change with ``--extend`` where that is exact."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` for the schema's sections (free-form mappings stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and is_section(dotted):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
