"""The study: the paper's rules (``paper_rules``), how well they and a fitted model predict measured failure
(``quality``), reported outcomes (``reported``), the CI gate's decision (``gate``) and the shipped evidence
(``evidence``)."""
