"""Model references from names alone, no torch: parsing and allow-lists (``refs``) and the sources' cheap
checks beside their loaders (``registry``)."""
