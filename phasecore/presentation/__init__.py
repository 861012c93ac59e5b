"""Presentation, outside the numerical core: the batch report (figures and HTML) and the evidence page's
markdown, drawn from results the other packages computed."""
