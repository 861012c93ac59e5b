"""One screening and many: per-model profiles, the pair step (``pipeline``), the paper's rules on one pair
(``paper_rules``), the result document (``result``), the request's dataset check (``validation``, no torch) and
grids of pairs (``batch``, ``batch_run``)."""
