"""The mathematics of randomized smoothing for segmentation: no file, network or plugin I/O.

=====================  ================================================================
module                 what it owns
=====================  ================================================================
``smoothing``          :class:`SmoothedSegmenter` ``g = f o D`` under Gaussian noise
``sampler``            :class:`NoiseVoter`: seeded draws -> class counts ``[K, H, W]``
``philox``             the one noise stream (Philox4x32-10 + Box-Muller, every device)
``philox_cpu``         the same 32-bit words from a numba loop on the CPU
``statistics``         binomial p-values, Holm, Bonferroni, Clopper-Pearson
``certificate``        :class:`Certificate` (labels with ABSTAIN, radius, p-values)
``metrics``            certified Dice, abstain rate
``hierarchy``          label hierarchies (validated trees, levels)
``hierarchy_metrics``  per-level certified Dice, certified information gain
=====================  ================================================================

Nothing is imported here on purpose: ``certframe.interfaces`` imports ``core.statistics``
while ``core.smoothing`` imports the interfaces, so an eager package import would cycle.
The public names are re-exported by :mod:`certframe` itself.
"""
