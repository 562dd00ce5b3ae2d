"""The diffusion transformer (DiT): config, blocks, attention kernels, PRoPE camera encoding, checkpoint loading."""
