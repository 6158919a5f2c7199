"""GAUDA's own code (Frisch et al.), wired by the bundle's configs.

- :mod:`gauda.joint_latents`: the joint image + mask latents and multi-hot class conditions the LDM is trained on.
- :mod:`gauda.generator`: the pair generator: class-conditional joint latent sampling with classifier-free guidance
  on the shared denoising loop, then both decoders.

GAUDA's online loop (:class:`common.handlers.GAUDAHandler`), its Bayesian segmenter (:mod:`common.networks`), the
uncertainty (:mod:`common.uncertainty`) and Adaptive Sampling (:class:`common.handlers.AdaptiveSamplingHandler`) live in
``common``: they work with any class-conditional pair generator and are judged by the shared evaluation.
"""
