"""The generic Registry: registration, duplicates, did-you-mean, provenance."""

from __future__ import annotations

import pytest

from probmcl_med.registry import Registry, RegistryError


def _make() -> Registry:
    return Registry("widget")


def test_register_get_names_and_summary() -> None:
    reg = _make()

    @reg.register("alpha")
    def alpha() -> int:
        """Returns one.

        More text that is not part of the summary.
        """
        return 1

    reg.register("beta", lambda: 2)
    assert reg.get("alpha") is alpha
    assert reg.names() == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg
    assert reg.entry("alpha").summary == "Returns one."
    assert reg.entry("alpha").source == __name__


def test_duplicate_name_with_a_different_object_names_both_sources() -> None:
    reg = _make()
    reg.register("same", lambda: 1, source="first_module")
    with pytest.raises(RegistryError) as info:
        reg.register("same", lambda: 2, source="second_module")
    message = str(info.value)
    assert "first_module" in message and "second_module" in message and "'same'" in message


def test_registering_the_same_object_twice_is_harmless() -> None:
    reg = _make()

    def fn() -> None:
        """Doc."""

    reg.register("fn", fn)
    reg.register("fn", fn)
    assert reg.names() == ["fn"]


def test_unknown_name_lists_close_matches_and_how_plugins_load() -> None:
    reg = _make()
    for name in ("correlation", "bhattacharyya", "cosine"):
        reg.register(name, object())
    with pytest.raises(RegistryError) as info:
        reg.get("corelation")
    message = str(info.value)
    assert "did you mean 'correlation'" in message
    assert "--plugins-dir" in message and "\n" not in message


def test_unknown_name_without_close_match_lists_what_exists() -> None:
    reg = _make()
    reg.register("jaccard", object())
    message = reg.unknown_message("zzz")
    assert "did you mean" not in message and "jaccard" in message


def test_empty_name_is_rejected() -> None:
    with pytest.raises(ValueError):
        _make().register("  ", object())


def test_len_of_a_fresh_registry_counts_the_builtins() -> None:
    import subprocess
    import sys

    code = (
        "from probmcl_med import SIMILARITIES, OVERLAPS, LIKELIHOODS, ENCODERS, DATASETS; "
        "print(*(len(r) for r in (SIMILARITIES, OVERLAPS, LIKELIHOODS, ENCODERS, DATASETS)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # correlation, bhattacharyya; jaccard, cosine; density, responsibility; the timm and torchvision encoders; demo,
    # csv, adp, coco, slides: each registry comes with its built-ins, registered by the module that defines them
    assert [int(n) >= 2 for n in out] == [True] * 5 and int(out[3]) >= 10 and int(out[4]) >= 5
