"""Building blocks a family's model is made of: attention backends, rotary embedding,
linear kinds, norms, the SwiGLU MLP and the gated delta rule. Plain torch modules and
functions that import nothing else of the engine."""
