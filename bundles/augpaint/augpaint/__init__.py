"""AugPaint's own code (Hu & Shi, "Inpainting is All You Need"), wired by the bundle's configs.

- :mod:`augpaint.inpainter`: the pair generator: keep the labelled region of a real pair in latent space, sample the
  rest with the shared denoising loop, decode.
- :mod:`augpaint.conditioning`: the concat condition of the conditional variant (masked image latent + keep mask) and
  the keep masks it is trained with.

What AugPaint shares with other methods lives in ``common``: keep masks in :mod:`common.regions`, seeded pair flips in
:mod:`common.data.laterality`, the loop and its known-region hook in :mod:`common.sampling`, latents in
:mod:`common.latents`, the confidence filter in :mod:`common.filtering`, the run in :mod:`common.generation`.
"""
