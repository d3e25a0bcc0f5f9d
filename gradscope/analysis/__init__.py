"""Analysis: what the numbers of a run mean.

``diagnose`` judges a run (read by ``reading``) for vanishing or exploding gradients,
dead units, saturation and divergence, with the evidence; ``theory`` holds mean-field
theory (q*, chi1, the depth scale) and the advice built on it. It stands on the reading
layer and, for the activations' and inits' definitions, on the engine.
"""
