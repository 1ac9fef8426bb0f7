"""Training the DRAMA recipe (augmentation, pruning, contrastive training); depends on dramasearch, never the reverse."""
