"""Networks: the encoders (timm and torchvision backbones, registered in ``ENCODERS``) and the linear head.

:mod:`~probmcl_med.models.encoders` builds an encoder by name (with local weight files, never a silent download);
:mod:`~probmcl_med.models.heads` holds the linear head and the inference classifier (encoder + head).
"""
