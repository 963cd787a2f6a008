"""Training only: one unit per mode (two-stage, asl, joint) on MONAI trainers, handlers, checkpoints, DDP.

The public entry point::

    from probmcl_med.engine import train

The saved model it writes (``RUN/model.pt``) is :mod:`probmcl_med.bundle`'s business; running it is
:mod:`probmcl_med.inference`'s.
"""

from __future__ import annotations

from probmcl_med.engine.run import RunResult, train

__all__ = ["RunResult", "train"]
