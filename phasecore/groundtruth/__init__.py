"""Ground truth: whether a pair aligns, measured. ``mapfit`` fits a map between the embeddings and scores it on
held-out samples (§7); ``outcome_test`` turns the per-group scores into an outcome; ``contrastive`` trains short
InfoNCE heads as a real alignment run."""
