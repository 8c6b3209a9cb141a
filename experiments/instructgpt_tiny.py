"""The embedded-testbed config, beside the other experiments: it ships inside the package
(instructjax/configs/instructgpt_tiny.py, the programs' default --config), so that an
installed instructjax runs without this repository. Its docstring has the commands."""

from instructjax.configs.instructgpt_tiny import VARIANTS, get_config  # noqa: F401
