"""What a resume may change, decided per key before anything is written.

A resumed run must end as the run it continues would have, and its run folder (``config.yaml``, ``model.pt``,
``info --json``) must record the values it used. So, against the config stored in the checkpoint:

- the keys of :data:`~probmcl_med.config.RESUME_MAY_CHANGE` (where and how fast it runs, how often it logs and saves,
  where the data lies) may take new values;
- a key that only a stage that has not begun reads (two-stage's ``classifier`` section while the contrastive stage
  runs) may too: that stage has not used it yet, so it uses the new value;
- the length of the stage being continued may change with ``--extend``, where a run of the new length would have
  taken the same steps so far (:func:`~probmcl_med.engine.schedule.continue_schedule` checks that, exactly);
- any other difference is a one-line refusal naming the keys, the run's values and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from probmcl_med.config import RESUME_MAY_CHANGE, RunConfig
from probmcl_med.config.schema import flatten
from probmcl_med.errors import ConfigError

_MISSING = object()


class StageKeys(Protocol):
    """What the policy needs of a stage: its name, the config sections it reads, the key of its length."""

    name: str
    sections: tuple[str, ...]
    length_key: str


def _owners(key: str, stages: Sequence[StageKeys]) -> list[int]:
    """The indices of the stages that read ``key`` (a key outside every stage's sections is read by all)."""
    section = key.split(".")[0]
    owners = [i for i, stage in enumerate(stages) if section in stage.sections]
    return owners or list(range(len(stages)))


def _shown(value: Any) -> str:
    return "(absent)" if value is _MISSING else repr(value)


def check_resume_config(
    config: RunConfig, state: dict[str, Any], stages: Sequence[StageKeys], extend: bool, where: str
) -> None:
    """Refuse a resume whose config differs from the run's where the run's stages have already used the value.

    Args:
        config: the config the resumed run would use.
        state: the checkpoint it continues from (``config``, ``stage_index``).
        stages: the mode's stages, in order.
        extend: ``--extend`` was given: the length of the stage being continued may change.
        where: the checkpoint, as named in the message.

    Raises:
        ConfigError: one line naming each key, the value given and the run's, and what to do.
    """
    stored, given = flatten(dict(state["config"])), flatten(config.to_dict())
    current = int(state["stage_index"])
    length = stages[current].length_key
    differ = []
    for key in sorted(set(stored) | set(given)):
        old, new = stored.get(key, _MISSING), given.get(key, _MISSING)
        if old == new or key in RESUME_MAY_CHANGE:
            continue
        if min(_owners(key, stages)) > current:  # read only by stages that have not begun
            continue
        if extend and key == length:
            continue
        differ.append((key, old, new))
    if not differ:
        return
    listed = "; ".join(f"{k} is {_shown(new)} but the run used {_shown(old)}" for k, old, new in differ[:4])
    more = f" (+{len(differ) - 4} more)" if len(differ) > 4 else ""
    todo = "resume with the run's values (its config.yaml), or start a new run with another --output-dir"
    if [k for k, _, _ in differ] == [length]:
        todo = (
            f"resume with the run's length, or add --extend to continue the {stages[current].name} stage as a run "
            "of the new length (where that is exact: lr_schedule constant)"
        )
    raise ConfigError(f"--resume from {where}: {listed}{more}; {todo}")
