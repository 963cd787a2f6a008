"""Plugin discovery by file path, failures, double loading, and the shipped worked example."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import probmcl_med.plugins as plugins_module
from probmcl_med import SIMILARITIES
from probmcl_med.errors import PluginError
from probmcl_med.plugins import load_plugin_file, load_plugins, module_name_for, plugin_folders

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "plugins" / "moment_matched_kl.py"


def _write(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def clean_similarities():
    """Forget what a test's plugins registered and imported, so each test loads its files afresh."""
    before = set(SIMILARITIES.names())
    yield SIMILARITIES
    for name in set(SIMILARITIES.names()) - before:
        SIMILARITIES.unregister(name)
    for module in [m for m in sys.modules if m.startswith("probmcl_med_plugin_")]:
        del sys.modules[module]
    plugins_module._loaded.clear()


def test_plugin_file_registers_with_its_path_as_source(tmp_path: Path, clean_similarities) -> None:
    path = _write(
        tmp_path / "plugs",
        "my_sim.py",
        '''
        from probmcl_med import SIMILARITIES

        @SIMILARITIES.register("tmp_test_sim")
        def tmp_test_sim(a, b):
            """A test similarity."""
            return None
        ''',
    )
    load_plugins([tmp_path / "plugs"], autoload=False)
    entry = SIMILARITIES.entry("tmp_test_sim")
    assert entry.source == str(path.resolve())
    assert entry.summary == "A test similarity."


def test_same_plugin_loaded_twice_is_harmless(tmp_path: Path, clean_similarities) -> None:
    path = _write(
        tmp_path,
        "twice.py",
        '''
        from probmcl_med import SIMILARITIES

        @SIMILARITIES.register("tmp_twice")
        def tmp_twice(a, b):
            """Twice."""
        ''',
    )
    first = load_plugin_file(path)
    load_plugins([tmp_path], autoload=False)
    assert load_plugin_file(path) is first
    # A copy of the same file elsewhere is a different module: same qualified name and different file -> error.
    copy = tmp_path / "other" / "twice.py"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    with pytest.raises(PluginError, match="already registered"):
        load_plugin_file(copy)


def test_module_names_are_unique_per_path_and_never_plain_plugins(tmp_path: Path) -> None:
    a = module_name_for(tmp_path / "a" / "x.py")
    b = module_name_for(tmp_path / "b" / "x.py")
    assert a != b and not a.startswith("plugins")


def test_broken_plugin_is_named_and_the_others_still_load(tmp_path: Path, clean_similarities) -> None:
    _write(tmp_path, "a_broken.py", "import definitely_not_a_module_xyz\n")
    _write(
        tmp_path,
        "b_good.py",
        '''
        from probmcl_med import SIMILARITIES

        @SIMILARITIES.register("tmp_good")
        def tmp_good(a, b):
            """Good."""
        ''',
    )
    with pytest.raises(PluginError) as info:
        load_plugins([tmp_path], autoload=False, strict=True)
    message = str(info.value)
    assert "a_broken.py" in message and "ModuleNotFoundError" in message and "\n" not in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert "tmp_good" in SIMILARITIES


def test_missing_plugins_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="does not exist"):
        load_plugins([tmp_path / "nope"], autoload=False)


def test_folders_from_cwd_env_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROBMCL_MED_PLUGINS", f"{tmp_path / 'env1'}:{tmp_path / 'env2'}")
    folders = plugin_folders([tmp_path / "flag"], autoload=True)
    assert folders == [tmp_path / "plugins", tmp_path / "env1", tmp_path / "env2", tmp_path / "flag"]
    monkeypatch.setenv("PROBMCL_MED_NO_AUTOLOAD", "1")
    assert plugin_folders([tmp_path / "flag"]) == [tmp_path / "flag"]


def test_worked_example_registers_from_a_temporary_folder_and_trains_one_step(
    tmp_path: Path, clean_similarities
) -> None:
    from probmcl_med.core.losses import ProbContrastiveLoss
    from probmcl_med.core.mdn import MixtureDensityNetwork

    folder = tmp_path / "plugins"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / EXAMPLE.name)
    load_plugins([folder], autoload=False)
    entry = SIMILARITIES.entry("moment_kl")
    assert entry.source == str((folder / EXAMPLE.name).resolve())

    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    labels = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 1, 0], [0, 1, 0], [1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]])
    encoder = torch.nn.Linear(16, 16)
    mdn = MixtureDensityNetwork(16, 3)
    loss_fn = ProbContrastiveLoss(similarity="moment_kl", overlap="jaccard", alpha=0.5, tau=0.2)
    params = list(encoder.parameters()) + list(mdn.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    before = [p.detach().clone() for p in params]
    loss = loss_fn(mdn(torch.nn.functional.normalize(encoder(features), dim=1)), labels.float())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


def test_example_similarity_matches_closed_form_of_moment_matched_gaussians(tmp_path: Path, clean_similarities) -> None:
    from probmcl_med import GaussianMixture

    load_plugins([EXAMPLE.parent], autoload=False)
    sim = SIMILARITIES.get("moment_kl")
    a = GaussianMixture(
        weights=torch.tensor([[0.25, 0.75]], dtype=torch.float64),
        means=torch.tensor([[1.0, -1.0]], dtype=torch.float64),
        variances=torch.tensor([[2.0, 1.0]], dtype=torch.float64),
        dim=3,
    )
    b = GaussianMixture(
        weights=torch.tensor([[1.0, 0.0]], dtype=torch.float64),
        means=torch.tensor([[0.5, 0.0]], dtype=torch.float64),
        variances=torch.tensor([[1.5, 1.0]], dtype=torch.float64),
        dim=3,
    )
    # Moments by hand: a: mean = 0.25 - 0.75 = -0.5; E[z^2] = 0.25 * (2 + 1) + 0.75 * (1 + 1) = 2.25; var = 2.0.
    # b: mean 0.5, var 1.5. KL(N(m1, v1) || N(m2, v2)) = 0.5 (v1 / v2 - 1 + ln(v2 / v1) + (m1 - m2)^2 / v2).
    import math

    kl_ab = 0.5 * (2.0 / 1.5 - 1 + math.log(1.5 / 2.0) + 1.0 / 1.5)
    kl_ba = 0.5 * (1.5 / 2.0 - 1 + math.log(2.0 / 1.5) + 1.0 / 2.0)
    expected = math.exp(-0.5 * (kl_ab + kl_ba))
    assert sim(a, b).item() == pytest.approx(expected, rel=1e-12)
    assert sim(a, a).item() == pytest.approx(1.0)


def test_installed_package_entry_point_is_loaded_and_autoload_can_be_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from probmcl_med import OVERLAPS

    site = tmp_path / "site"
    dist = site / "probmcl_test_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: probmcl-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[probmcl_med.plugins]\nep_overlap = probmcl_test_plugin_mod\n")
    (site / "probmcl_test_plugin_mod.py").write_text(
        textwrap.dedent(
            '''
            from probmcl_med import OVERLAPS

            @OVERLAPS.register("ep_overlap")
            def ep_overlap(ya, yb):
                """Registered by an installed package's entry point."""
                return (ya @ yb.T).clamp(0, 1)
            '''
        )
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROBMCL_MED_PLUGINS", raising=False)
    try:
        monkeypatch.setenv("PROBMCL_MED_NO_AUTOLOAD", "1")
        load_plugins()
        assert "ep_overlap" not in OVERLAPS
        monkeypatch.delenv("PROBMCL_MED_NO_AUTOLOAD")
        loaded = load_plugins()
        assert "ep_overlap" in OVERLAPS
        assert any(p.kind == "entry point" and "ep_overlap" in p.source for p in loaded)
    finally:
        OVERLAPS.unregister("ep_overlap")
        sys.modules.pop("probmcl_test_plugin_mod", None)
        for key in [k for k in plugins_module._loaded if "ep_overlap" in k]:
            del plugins_module._loaded[key]
