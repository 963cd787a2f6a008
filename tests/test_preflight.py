"""Plugins checked and contained: the contract checks of probmcl_med.testing, run before training (one line naming
the plugin's file, nothing written); a non-finite loss stops the run naming the step and the component; run.json
records the plugin files used; a model trained with a plugin loads without it."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_plugins import _write as write_plugin

from probmcl_med import DATASETS, ENCODERS, LIKELIHOODS, OVERLAPS, SIMILARITIES, testing
from probmcl_med.cli.main import main
from probmcl_med.config import load_config
from probmcl_med.engine import train
from probmcl_med.engine.checkpoint import CheckpointManager
from probmcl_med.engine.preflight import check_components, configured_components
from probmcl_med.errors import ContractError, TrainingDiverged
from probmcl_med.plugins import load_plugin_file

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "mode=two-stage",
    "encoder.name=test_resnet",
    "dataset.name=demo",
    "dataset.image_size=16",
    "dataset.options={n_train: 16, n_valid: 8, n_test: 8}",
    "dataset.augment.num_ops=1",
    "contrastive.epochs=1",
    "contrastive.batch_size=4",
    "contrastive.mdn_hidden=[16, 8]",
    "classifier.epochs=1",
    "classifier.batch_size=8",
    "checkpoint.every_n_iterations=1",
    "workers=0",
    "amp=false",
]


# --------------------------------------------------------------------------------------------------------------------
# The checks themselves
# --------------------------------------------------------------------------------------------------------------------


def test_the_built_ins_pass() -> None:
    for name in SIMILARITIES.names():
        testing.check_similarity(SIMILARITIES.get(name), name=name, components=4, dim=32)
    for name in OVERLAPS.names():
        testing.check_overlap(OVERLAPS.get(name), name=name)
    for name in LIKELIHOODS.names():
        testing.check_likelihood(LIKELIHOODS.get(name), name=name)
    testing.check_encoder(ENCODERS.get("test_resnet"), name="test_resnet")


def _bhattacharyya(a, b):
    return SIMILARITIES.get("bhattacharyya")(a, b)


@pytest.mark.parametrize(
    ("similarity", "message"),
    [
        (lambda a, b: _bhattacharyya(a, a), r"shape \(4, 4\); expected \(4, 3\)"),
        (lambda a, b: _bhattacharyya(a, b) * float("nan"), r"non-finite values \(nan: 12 of 12\)"),
        (lambda a, b: _bhattacharyya(a, b) + 2.0, r"values in \[2\..*\]; they must lie in \[0, 1\]"),
        (lambda a, b: _bhattacharyya(a, b) - _bhattacharyya(a, b).min() - 1e-3, r"\[-0\.001, .*must lie in \[0, 1\]"),
        (lambda a, b: _bhattacharyya(a, b).detach(), "not differentiable"),
        (lambda a, b: _bhattacharyya(a, b).tolist(), "returned list, not a torch.Tensor"),
        (lambda a, b: a.nope, "raised AttributeError"),
    ],
    ids=["shape", "nan", "above-1", "below-0", "detached", "not-a-tensor", "raises"],
)
def test_a_similarity_breaking_its_contract_is_named(similarity, message: str) -> None:
    with pytest.raises(ContractError, match=message) as info:
        testing.check_similarity(similarity, name="mine", source="plugins/mine.py")
    assert str(info.value).startswith("similarity 'mine' from plugins/mine.py ") and "\n" not in str(info.value)


def _asymmetric_sigmoid(a, b):
    """In [0, 1], finite, differentiable: the checks before issue 24 passed it. Not 1 on identical mixtures, and
    f(a, b) != f(b, a)^T."""
    return torch.sigmoid(a.means.mean(1)[:, None] - 2 * b.means.mean(1)[None, :])


def _half_on_itself(a, b):
    """Symmetric, in [0, 1], differentiable, but 0.5 x the Bhattacharyya bound: identical mixtures score 0.5."""
    return 0.5 * _bhattacharyya(a, b)


class _WrongLogForm:
    """A similarity whose log_form is not the log of its values (it forgot the 0.5 of its own value)."""

    def __call__(self, a, b):
        return 0.5 * _bhattacharyya(a, b) + 0.5

    def log_form(self, a, b):
        return _bhattacharyya(a, b).log()


@pytest.mark.parametrize(
    ("similarity", "message"),
    [
        (_asymmetric_sigmoid, "is not 1 for a mixture compared with itself"),
        (_half_on_itself, r"is not 1 for a mixture compared with itself \(off by up to 0\.5\)"),
        (lambda a, b: _bhattacharyya(a, b) ** (1 + 0.1 * torch.arange(len(b))), "is not symmetric"),
        (_WrongLogForm(), "log_form is not the log of its values"),
    ],
    ids=["asymmetric-sigmoid", "half-on-itself", "asymmetric", "wrong-log-form"],
)
def test_identity_symmetry_and_log_form_are_checked(similarity, message: str) -> None:
    """Issue 24 item 10: a similarity that is not 1 for identical mixtures, or not symmetric, passed the check."""
    with pytest.raises(ContractError, match=message) as info:
        testing.check_similarity(similarity, name="mine", source="plugins/mine.py")
    assert "\n" not in str(info.value)


def test_block_mean_geometry_is_checked_as_the_run_uses_it() -> None:
    testing.check_similarity(SIMILARITIES.get("bhattacharyya"), name="bhattacharyya", mean_dim=3)
    testing.check_likelihood(LIKELIHOODS.get("responsibility"), name="responsibility", mean_dim=3)
    with pytest.raises(ContractError, match="raised ValueError: the correlation similarity assumes one number"):
        testing.check_similarity(SIMILARITIES.get("correlation"), name="correlation", mean_dim=3)


def test_rounding_is_not_a_breach() -> None:
    testing.check_similarity(lambda a, b: (_bhattacharyya(a, b) * (1 + 5e-5)).clamp_max(1 + 5e-5))


def test_overlap_likelihood_encoder_and_dataset_breaches() -> None:
    with pytest.raises(ContractError, match=r"values in \[0, 2\]"):
        testing.check_overlap(lambda ya, yb: 2 * (ya @ yb.T).clamp(0, 1))
    with pytest.raises(ContractError, match=r"shape \(5,\)"):
        testing.check_overlap(lambda ya, yb: ya.sum(1))
    with pytest.raises(ContractError, match="expected a scalar"):
        testing.check_likelihood(lambda m, z, y: (z**2).sum(1))
    with pytest.raises(ContractError, match="non-finite value"):
        testing.check_likelihood(lambda m, z, y: torch.log(z.sum() * 0))

    class Raw(torch.nn.Module):  # raw pooled features (the contract): accepted, at the width it claims only
        num_features = 4
        normalization = ((0.5,) * 3, (0.5,) * 3)

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3)) + 3.0

    assert testing.check_encoder(Raw()).shape == (2, 4)
    wide = Raw()
    wide.num_features = 5
    with pytest.raises(ContractError, match=r"shape \(2, 4\)"):
        testing.check_encoder(wide)

    class Items:
        def __init__(self, item: dict) -> None:
            self.class_names, self.items, self.name = ["a", "b"], [item], "mine"

        def __len__(self) -> int:
            return 1

    with pytest.raises(ContractError, match="dicts with 'image' and 'label'"):
        testing.check_dataset(Items({"image": "x.png", "labels": [1, 0]}))
    with pytest.raises(ContractError, match="float 0/1"):
        testing.check_dataset(Items({"image": "x.png", "label": np.array([1.0, 0.5], np.float32)}))
    testing.check_dataset(Items({"image": "x.png", "label": np.array([1.0, 0.0], np.float32)}))


def test_the_checks_leave_the_global_random_state_alone() -> None:
    config = load_config(overrides=TINY)
    from probmcl_med.models.encoders import get_encoder

    encoder = get_encoder("test_resnet")
    dataset = DATASETS.get("demo")(None, "train", n_train=16, n_valid=8, n_test=8)
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(9)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    components = check_components(config, encoder, dataset, len(dataset.class_names), objective=True)
    assert [c.key for c in components] == [
        "encoder.name",
        "dataset.name",
        "contrastive.similarity",
        "contrastive.overlap",
        "contrastive.likelihood",
    ]
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    assert [c.key for c in configured_components(config, objective=False)] == ["encoder.name", "dataset.name"]


# --------------------------------------------------------------------------------------------------------------------
# Before training, and during it
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def forget():
    """Unregister the similarities a test's plugins added."""
    before = set(SIMILARITIES.names())
    yield
    for name in set(SIMILARITIES.names()) - before:
        SIMILARITIES.unregister(name)


def test_a_plugin_breaking_its_contract_stops_train_before_anything_is_written(tmp_path: Path, capsys, forget) -> None:
    path = write_plugin(
        tmp_path / "plugs",
        "square.py",
        '''
        from probmcl_med import SIMILARITIES

        @SIMILARITIES.register("square_sim")
        def square_sim(a, b):
            """Compares a with itself: the wrong shape."""
            return SIMILARITIES.get("bhattacharyya")(a, a)
        ''',
    )
    run = tmp_path / "run"
    args = ["train", *(x for s in TINY for x in ("--set", s)), "--set", "contrastive.similarity=square_sim"]
    assert main([*args, "--output-dir", str(run), "--plugins-dir", str(path.parent)]) == 1
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert f"similarity 'square_sim' from {path.resolve()} returned shape (4, 4); expected (4, 3)" in line
    assert "nothing was written" in line and "probmcl_med.testing.check_similarity" in line
    assert not run.exists()


LATE_NAN = '''
from probmcl_med import SIMILARITIES

calls = {"training": 0}


@SIMILARITIES.register("late_nan")
def late_nan(a, b):
    """Correct on small batches; NaN from the third training batch (8 views) on."""
    value = SIMILARITIES.get("bhattacharyya")(a, b)
    if len(a) > 4:
        calls["training"] += 1
        if calls["training"] >= 3:
            return value * float("nan")
    return value
'''


def test_a_non_finite_loss_stops_at_its_step_naming_the_component(tmp_path: Path, forget) -> None:
    path = write_plugin(tmp_path / "plugs", "late_nan.py", LATE_NAN)
    load_plugin_file(path)
    config = load_config(overrides=[*TINY, "contrastive.similarity=late_nan", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(TrainingDiverged) as info:
        train(config)
    message = str(info.value)
    assert message.startswith("step 3 (epoch 1, batch 3 of 4) of the contrastive stage: the loss is nan")
    assert f"similarity 'late_nan' from {path.resolve()} returned nan values" in message and "\n" not in message
    saved = CheckpointManager(tmp_path / "run" / "checkpoints").list()
    assert [c.iteration for c in saved][-1] == 2  # steps 1 and 2 were saved, step 3 was not
    assert not (tmp_path / "run" / "model.pt").exists()


# --------------------------------------------------------------------------------------------------------------------
# A run with a plugin: recorded, and its model loads without it
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("plugin-run")
    folder = root / "plugs"
    folder.mkdir()
    plugin = folder / "moment_matched_kl.py"
    plugin.write_bytes((REPO / "plugins" / "moment_matched_kl.py").read_bytes())
    load_plugin_file(plugin)
    try:
        config = load_config(overrides=[*TINY, "contrastive.similarity=moment_kl", f"output_dir={root / 'run'}"])
        train(config)
    finally:
        SIMILARITIES.unregister("moment_kl")
    return root, plugin


def test_run_json_records_the_plugin_file_and_its_hash(plugin_run) -> None:
    root, plugin = plugin_run
    meta = json.loads((root / "run" / "run.json").read_text())
    by_key = {c["key"]: c for c in meta["components"]}
    record = by_key["contrastive.similarity"]
    assert record["name"] == "moment_kl" and record["file"] == str(plugin.resolve())
    assert record["sha256"] == hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert (
        by_key["contrastive.overlap"]["source"] == "probmcl_med.core.overlaps"
        and "sha256" not in by_key["contrastive.overlap"]
    )


def test_a_model_trained_with_a_plugin_loads_without_it(plugin_run, tmp_path: Path, capsys) -> None:
    from test_inference import write_images

    root, _ = plugin_run
    run = str(root / "run")
    assert "moment_kl" not in SIMILARITIES
    [image] = write_images(tmp_path / "imgs", 1, size=(16, 16))
    commands = [
        ["info", "--checkpoint", run, "--json"],
        ["predict", str(image), "-c", run, "--out", str(tmp_path / "pred"), "--device", "cpu"],
        ["evaluate", "--checkpoint", run, "--split", "test", "--json", "--device", "cpu"],
        ["explain", str(image), "-c", run, "--out", str(tmp_path / "cam"), "--device", "cpu"],
    ]
    for command in commands:
        assert main(command) == 0, (command, capsys.readouterr().err)
    assert json.loads((tmp_path / "cam" / "explain.json").read_text())["target_layer"] == "encoder.model.act1"


# --------------------------------------------------------------------------------------------------------------------
# What a mode needs of its encoder
# --------------------------------------------------------------------------------------------------------------------

FROZEN_ENCODER = '''
from probmcl_med import ENCODERS
from probmcl_med.models.encoders import get_encoder


@ENCODERS.register("frozen_only")
def frozen_only(pretrained=False, **options):
    """test_resnet whose weights take no gradient (a frozen foundation model's wrapper, say)."""
    encoder = get_encoder("test_resnet")
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder
'''


@pytest.mark.parametrize("mode", ["asl", "two-stage", "joint"])
def test_an_encoder_without_trainable_parameters_is_refused_where_the_mode_trains_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    path = write_plugin(tmp_path / "plugs", "frozen_only.py", FROZEN_ENCODER)
    run = tmp_path / "run"
    args = ["--plugins-dir", str(path.parent), "train", "--set", "dataset.name=demo", "--set", f"mode={mode}",
            "--set", "encoder.name=frozen_only",
            "--set", "dataset.image_size=16", "--set", "dataset.options={n_train: 16, n_valid: 8, n_test: 8}",
            "--set", "workers=0", "--output-dir", str(run)]  # fmt: skip
    try:
        capsys.readouterr()
        assert main(args) == 1
        err = capsys.readouterr().err
        stage = {"asl": "classifier", "two-stage": "contrastive", "joint": "joint"}[mode]
        expected = f"encoder 'frozen_only' from {path.resolve()} has no trainable parameters, and the {stage} stage"
        assert expected in err and "use mode probe" in err, err
        assert not run.exists()
        # mode probe (a head on the frozen encoder) needs none: it passes the same check
        from probmcl_med.engine.modes import stages_of
        from probmcl_med.engine.preflight import check_stage_needs

        probe = load_config(overrides=["mode=probe", "encoder.name=frozen_only"])
        check_stage_needs(probe, stages_of(probe), ENCODERS.get("frozen_only")())
    finally:
        ENCODERS.unregister("frozen_only")
