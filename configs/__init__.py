"""The run configurations shipped with probmcl-med (YAML files beside this one).

A package, so that the YAML files install with the wheel and are found from any working directory through
``importlib.resources``; ``probmcl_med.config.find_named_config`` looks in ./configs first, then here.
"""
