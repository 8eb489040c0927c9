"""Imports the modules that add commands to ``pagelens`` beside the core ones in cli.py.

Each such module registers its commands on ``app.cli.cli`` when imported; a module that is
not there yet is simply absent, but one that fails to import is a bug and must be loud.
"""

import importlib
import importlib.util

COMMAND_MODULES = (
    "app.cli_check",
    "app.cli_eval",
    "app.cli_serve",
    "app.cli_bench",
    "app.cli_ask",
    "app.cli_mcp",
)

for _name in COMMAND_MODULES:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)
