"""DiffuseExpand (Shao et al.): one pixel-space DDPM that makes masks from noise and images from masks, guided by a
noise-aware segmenter, sampled with DPM-Solver++ and filtered by a segmenter of the real pairs.

- :mod:`diffuseexpand.encoding`: images and masks as samples of one shape (the mode condition y1, the mask y2);
- :mod:`diffuseexpand.items`: the training items of stages I and II (a mode drawn per item);
- :mod:`diffuseexpand.segmenter`: the noise-aware segmenter of stage II and its loss;
- :mod:`diffuseexpand.generator`: stage III, masks then images with classifier-free and classifier guidance.

The shared parts live in ``common``: the loop, DPM-Solver++ and the guidance denoisers (:mod:`common.sampling`), the
class-label condition dropout (:mod:`common.engines`), the Dice filter of stage IV (:mod:`common.filtering`), the run
(:mod:`common.generation`).
"""

from diffuseexpand import encoding, generator, items, segmenter

__all__ = ["encoding", "generator", "items", "segmenter"]
