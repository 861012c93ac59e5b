"""One screening and many: per-model profiles, the pair step (``pipeline``), the result document (``result``),
the request's dataset check (``validation``, no torch) and grids of pairs (``batch``, ``batch_run``)."""
