"""The math of ProbMCL, pure PyTorch and NumPy: it knows nothing of data, engines, files or the command line.

- :mod:`~probmcl_med.core.mixture`: the Gaussian mixture type (isotropic components, one per class).
- :mod:`~probmcl_med.core.mdn`: the mixture density network, features -> mixture (paper Eq. 1).
- :mod:`~probmcl_med.core.similarities`, :mod:`~probmcl_med.core.overlaps`, :mod:`~probmcl_med.core.likelihoods`:
  the registered building blocks of the contrastive objective (docs/math.md s.3-6).
- :mod:`~probmcl_med.core.triton_correlation`: the correlation similarity's ``log K`` as one fused Triton kernel per
  direction (``backend="triton"``, the default on CUDA); imported lazily, only where Triton is wanted.
- :mod:`~probmcl_med.core.losses`: the probabilistic contrastive loss, the stage-1 objective and the classification
  losses (docs/math.md s.7-9).
- :mod:`~probmcl_med.core.metrics`: the paper's multi-label metrics (docs/math.md s.10), low enough for training's
  validation and the evaluation reports to share them.

Only :mod:`probmcl_med.registry` and :mod:`probmcl_med.errors` lie below; import-linter checks it (pyproject.toml).
"""
