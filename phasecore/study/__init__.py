"""The study: how well the paper's rules (evaluated per pair in ``phasecore.screening.paper_rules``) and a
fitted model predict measured failure (``quality``), reported outcomes (``reported``), the CI gate's decision
(``gate``) and the shipped evidence (``evidence``)."""
