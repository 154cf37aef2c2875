"""Label-free group inference: pseudo-groups for a pool without group labels."""
