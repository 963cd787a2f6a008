"""Networks: the encoders (timm and torchvision backbones, registered in ``ENCODERS``) and the linear head.

:mod:`~probmcl_med.models.encoders` builds an encoder by name (with local weight files, never a silent download);
:mod:`~probmcl_med.models.presets` registers the pathology foundation-model presets; :mod:`~probmcl_med.models.heads`
holds the linear head and the inference classifier (encoder + head).

Importing anything of this package registers every built-in encoder, the presets included (they build on
:mod:`~probmcl_med.models.encoders`, so that module cannot import them itself): ``get_encoder("uni")`` works wherever
``get_encoder`` does.
"""

from __future__ import annotations

from probmcl_med.models import encoders, presets  # noqa: F401 (they register the built-in encoders and presets)
