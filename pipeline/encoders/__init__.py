"""Everything around the DiT that turns inputs into latents and back: text/image encoders, VAE, scheduler, causal VAE decode."""
