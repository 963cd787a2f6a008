"""The public import paths a plugin or a script uses keep working whatever the package layout inside."""

from __future__ import annotations

import subprocess
import sys

import probmcl_med
import probmcl_med.core.classification as core_classification
import probmcl_med.core.losses as core_losses
import probmcl_med.core.metrics as core_metrics
import probmcl_med.core.similarities as core_similarities


def test_registries_and_the_mixture_type_at_the_top_level() -> None:
    from probmcl_med import DATASETS, ENCODERS, LIKELIHOODS, OVERLAPS, SIMILARITIES, GaussianMixture, Registry
    from probmcl_med.core.mixture import GaussianMixture as CoreMixture

    assert GaussianMixture is CoreMixture
    for registry in (DATASETS, ENCODERS, LIKELIHOODS, OVERLAPS, SIMILARITIES):
        assert isinstance(registry, Registry) and len(registry) > 0
    assert set(probmcl_med.__all__) >= {"SIMILARITIES", "OVERLAPS", "ENCODERS", "DATASETS", "LIKELIHOODS"}


def test_losses_similarities_and_metrics_at_their_public_paths() -> None:
    import probmcl_med.losses as losses
    import probmcl_med.similarities as similarities
    from probmcl_med.evaluation import multilabel_metrics

    for name in losses.__all__:
        home = core_losses if hasattr(core_losses, name) else core_classification
        assert getattr(losses, name) is getattr(home, name)
    for name in similarities.__all__:
        assert getattr(similarities, name) is getattr(core_similarities, name)
    assert multilabel_metrics is core_metrics.multilabel_metrics


def test_plugin_api_imports_in_a_fresh_interpreter() -> None:
    code = (
        "from probmcl_med import SIMILARITIES, OVERLAPS, ENCODERS, DATASETS, LIKELIHOODS, GaussianMixture, Registry; "
        "from probmcl_med.losses import ProbContrastiveLoss; "
        "from probmcl_med.similarities import correlation_similarity; "
        "from probmcl_med.evaluation import multilabel_metrics; "
        "assert SIMILARITIES.get('correlation') is correlation_similarity"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
