"""Operations toolkit for the people who look after an edge PC (no internet, no developer).

``bdi-agent weights``, ``doctor``, ``backup``/``restore`` and ``roi export``/``import``.
Nothing here runs at import time; torch and timm are imported inside the functions that
need them, so the commands that do not load the model start fast.
"""
