"""Building blocks a family's model is made of: attention backends, rotary embedding,
linear kinds and norms. Plain torch modules that import nothing else of the engine."""
