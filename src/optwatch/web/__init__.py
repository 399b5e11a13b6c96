"""The dashboard in a browser (``--web``): ``server`` serves it behind a token, ``tab`` is the process each
browser tab gets. Nothing is imported here: ``tab`` starts without aiohttp or textual-serve."""
