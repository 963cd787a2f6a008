"""``python -m probmcl_med.cli``: the same as the ``probmcl-med`` console script (used under torchrun)."""

from probmcl_med.cli.main import run

run()
