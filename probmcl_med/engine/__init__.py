"""Training only: each mode a list of stage objects (contrastive, classifier, joint) on MONAI's SupervisedTrainer,
evaluator and handlers; the run folder, exact resume and its policy, DDP.

The public entry point::

    from probmcl_med.engine import train

The saved model it writes (``RUN/model.pt``) is :mod:`probmcl_med.bundle`'s business; running it is
:mod:`probmcl_med.inference`'s. docs/architecture.md draws the stages and where a new mode goes.
"""

from __future__ import annotations

from probmcl_med.engine.run import RunResult, train

__all__ = ["RunResult", "train"]
