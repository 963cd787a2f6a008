"""torch's CPU threads sized to the cores the DataLoader workers leave: the rule, the config key, where it applies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import probmcl_med.threads as threads
from probmcl_med.config import load_config
from probmcl_med.errors import ConfigError


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the rules below hold without the cap
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "workers, cores, local, expected",
    [(0, 2, 1, 2), (1, 2, 1, 1), (2, 2, 1, 1), (8, 16, 1, 8), (8, 4, 1, 1), (2, 16, 4, 2), (0, 16, 3, 5)],
)
def test_auto_threads_is_the_share_of_cores_minus_workers(workers: int, cores: int, local: int, expected: int) -> None:
    assert threads.auto_threads(workers, cores, local) == expected


def test_auto_threads_reads_torchrun_local_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.auto_threads(1, cores=8) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert threads.auto_threads(1, cores=8) == 7


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), ("2,1", 2), ("", None), ("0", None), ("x", None)])
def test_omp_num_threads_caps_the_auto_threads(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: int | None
) -> None:
    """A study's child or a scheduler's job started with OMP_NUM_THREADS=1 gets one intra-op thread from the auto
    setting (the issue-25 study ran each child at 2 on 2 shared cores); unset, empty or invalid: the share alone.
    Loader worker processes are counted without the cap (capped=False)."""
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert threads.thread_cap() == expected
    for cores, workers in ((8, 0), (8, 2), (2, 0), (1, 0)):
        share = max(1, cores - workers)
        assert threads.auto_threads(workers, cores, 1) == (min(share, expected) if expected else share)
        assert threads.auto_threads(workers, cores, 1, capped=False) == share
    if expected == 1:
        monkeypatch.setattr(threads, "available_cores", lambda: 6)
        assert threads.configure_threads(0, workers=0) == 1 and torch.get_num_threads() == 1


def test_configure_threads_explicit_or_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    assert threads.configure_threads(1, workers=4) == 1 and torch.get_num_threads() == 1
    for auto in (0, None):
        assert threads.configure_threads(auto, workers=2) == 4 and torch.get_num_threads() == 4


def test_config_key_accepts_zero_null_and_counts_rejects_negative() -> None:
    assert load_config().threads == 0
    assert load_config(overrides=["threads=null"]).threads is None
    assert load_config(overrides=["threads=3"]).threads == 3
    with pytest.raises(ConfigError, match="threads"):
        load_config(overrides=["threads=-1"])


@pytest.mark.parametrize("mode", ["two-stage", "asl", "probe", "joint"])
def test_every_mode_reads_and_prints_the_key(mode: str) -> None:
    config = load_config(overrides=[f"mode={mode}", "threads=3"])
    assert config.to_dict()["threads"] == 3  # what --print-config, config.yaml and the bundle show
    assert "threads: 3" in config.to_yaml().splitlines()


def test_training_applies_the_setting_before_the_run(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import probmcl_med.engine.run as run_module

    seen: list[int] = []

    class Stop(Exception):
        pass

    def fake_session(*args, **kwargs):  # the first thing of the run after the shared set-up
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(run_module, "Session", fake_session)
    monkeypatch.setattr(threads, "available_cores", lambda: 5)
    for overrides, expected in ((["threads=1"], 1), (["workers=2"], 3), (["threads=0", "workers=0"], 5)):
        config = load_config(overrides=[*overrides, "device=cpu", f"output_dir={tmp_path / 'run'}"])
        with pytest.raises(Stop):
            run_module.train(config)
        assert seen[-1] == expected


def test_cpu_inference_loader_applies_the_automatic_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from probmcl_med.inference.inputs import prediction_batches

    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    torch.set_num_threads(1)
    prediction_batches(list(range(4)), batch_size=2, workers=1, device=torch.device("cpu"))  # type: ignore[arg-type]
    assert torch.get_num_threads() == 3
