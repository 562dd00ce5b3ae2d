"""The 720p super-resolution stage of HunyuanVideo-1.5 (``720p_sr_distilled``), as far as it is built: the latent
upsampler and the stage's frame rule (docs/MODELS.md says what is still missing)."""
