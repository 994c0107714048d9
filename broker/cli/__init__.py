"""The broker's ``istmo`` commands, plugged into the client CLI through the
``istmo.commands`` entry point: the parsers (``commands``), one module per command group,
sharing ``_common``. Each command imports the server only when it runs.
"""
