"""Similarity of two models' views of the same samples: kernel alignment with its nulls (§2), representation
similarity (CKA, mutual kNN, §6) and the information plane (§9)."""
