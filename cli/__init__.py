"""The ``probmcl-med`` command-line interface (installed as ``probmcl_med.cli``).

Import policy: every command module imports the library parts its command runs (engine, inference, evaluation,
sweep) inside the command function, not at the top. All command modules are imported to build the app, so
top-level imports would make ``probmcl-med --help``, ``--version`` and ``plugins`` wait for MONAI, timm and the
rest: measured ``import probmcl_med.cli.main`` 3.3 s alone, 13.7 s together with ``probmcl_med.engine``,
``probmcl_med.inference``, ``probmcl_med.evaluation.run_eval`` and ``probmcl_med.sweep`` (best of 3, on the 2-core
dev machine under load; the ratio, about 4x, is what matters). Light modules (config, errors, plugins, registry)
are imported at the top.
"""
