"""The ``probmcl-med`` command-line interface (installed as ``probmcl_med.cli``)."""
