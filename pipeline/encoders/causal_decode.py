"""Chunk-by-chunk VAE decoding: upstream HY-WorldPlay's streamed decode, exactly, for any chunking.

The HunyuanVideo-1.5 VAE decoder (diffusers ``AutoencoderKLHunyuanVideo15.decoder``) is causal in
time: every 3D convolution pads only the past (two replicated copies of the first frame), the
temporal upsamplers treat the very first latent specially (one output frame instead of two), and the
mid-block attention lets a frame see only itself and earlier frames. So latent frames can be decoded
in order, a few at a time, as long as each layer remembers what it saw:

* each causal convolution keeps the last ``kernel_t - 1`` frames of its (time-padded) input and
  prepends them to the next call instead of the replicated first frame;
* each temporal upsampler applies its first-frame rule only to the video's first latent;
* the mid-block attention (one head over all channels, at latent resolution) has two meanings, chosen
  with ``attention``:

  - ``"frame"`` (default): each latent frame attends to itself only. This is what HY-WorldPlay's own
    pipeline does on one GPU: its ``hunyuanvideo_15_vae_w_cache`` VAE decodes one latent at a time
    with convolution caches and calls the attention block on that latent alone. Matching it keeps our
    frames those of the model as published, and costs no cache.
  - ``"causal"``: each latent frame attends to itself and every earlier one (keys and values of the
    frames decoded so far are kept), which is diffusers' whole-video ``vae.decode`` (the causal mask
    of ``HunyuanVideo15AttnBlock``), here one unmasked SDPA call per latent frame.

Compared with ``vae.decode`` on the whole video this needs no spatial tiles (tiles overlap by 25 %,
which costs ~1.66x the convolution work at 832x480 and blends seams), never builds the dense causal
mask diffusers fills with a Python loop (seq_len iterations per tile), and bounds memory by the
number of latents decoded per step instead of the video length. It is also what lets the AR rollout
hand over frames while later chunks are still denoising.

The walk below mirrors the module tree of the diffusers decoder and calls its own submodules
(norms, activations, 1x1 projections, ``nn.Conv3d``) for all the arithmetic; only the temporal
bookkeeping is ours. ``tests/test_causal_decode.py`` checks both modes against ``vae.decoder`` run on
the whole video (for ``"frame"``, with the attention mask made block-diagonal) for several step sizes
and chunkings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ATTENTION_MODES", "CausalVAEDecoder", "DEFAULT_LATENTS_PER_STEP"]

#: What a latent frame's mid-block attention sees: itself ("frame", upstream HY-WorldPlay) or itself
#: and all earlier frames ("causal", diffusers' whole-video decode).
ATTENTION_MODES = ("frame", "causal")

#: Latent frames decoded per decoder pass. One latent is 4 video frames; at 832x480 the decoder's
#: last stage holds ~0.7 GB of activations per output frame in bf16 (measured on an H100: 29 frames
#: untiled peaked at 20.1 GiB), so one latent per step adds ~3 GB next to the DiT's K/V cache.
DEFAULT_LATENTS_PER_STEP = 1


class CausalVAEDecoder:
    """Stateful, in-order decoder over one video.

    >>> dec = CausalVAEDecoder(vae)                       # doctest: +SKIP
    >>> first = dec.decode(latents[:, :, :4])             # 13 frames
    >>> rest = dec.decode(latents[:, :, 4:])              # 4 frames per latent
    >>> torch.cat([first, rest], 2)  # == decoding all latents in one call

    ``decode`` takes *normalised* latents (as the DiT produces them: divided by ``scaling_factor``
    here) and returns float32 video in [0, 1], ``[B, 3, frames, 16 h, 16 w]``. Call :meth:`reset`
    (or make a new decoder) before the next video.
    """

    def __init__(self, vae, *, latents_per_step: int = DEFAULT_LATENTS_PER_STEP, attention: str = "frame"):
        if int(latents_per_step) < 1:
            raise ValueError(f"latents_per_step must be at least 1, got {latents_per_step}")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        self.attention = attention
        self.vae = vae
        self.decoder = vae.decoder
        self.latents_per_step = int(latents_per_step)
        for name, module in self.decoder.named_modules():
            if hasattr(module, "time_causal_padding") and module.pad_mode != "replicate":
                raise ValueError(f"{name}: causal decoding needs replicate padding, got {module.pad_mode!r}")
        self.reset()

    # -- public API ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the video decoded so far."""
        self._history: dict[torch.nn.Module, torch.Tensor] = {}  # conv -> last kernel_t - 1 input frames
        self._keys_values: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.latents_decoded = 0

    def _walk(self):
        """The decoder's blocks in call order: (module, causal past frames it reads, frame rate at its
        input in frames per latent); the rate doubles after each temporal upsampler."""
        d, rate, out = self.decoder, 1, []

        def past(*convs) -> int:
            return sum(conv.time_causal_padding[4] for conv in convs)

        out.append((d.conv_in, past(d.conv_in), rate))
        for resnet in d.mid_block.resnets:
            out.append((resnet, past(resnet.conv1, resnet.conv2), rate))
        for block in d.up_blocks:
            for resnet in block.resnets:
                out.append((resnet, past(resnet.conv1, resnet.conv2), rate))
            for upsampler in block.upsamplers or ():
                out.append((upsampler, past(upsampler.conv), rate))
                if upsampler.add_temporal_upsample:
                    rate *= 2
        out.append((d.conv_out, past(d.conv_out), rate))
        return out

    def history_latents(self) -> int:
        """How many latents back the decoder's carried state reaches (its temporal receptive field).

        Each causal convolution looks ``kernel_t - 1`` frames into the past at its own frame rate (one
        frame per latent before the first temporal upsampler, two after it, ...); the sum over the
        decoder, in latents, rounded up, bounds how far back any carried frame depends on the input.
        """
        return math.ceil(sum(past / rate for _, past, rate in self._walk()))

    def _trim_plan(self) -> dict:
        """Per block: how many of its input frames can still reach the carried state at the end (the
        rest of the blocks' receptive field), so a resume drops the others before the block."""
        plan, remaining = {}, 0.0
        for module, past, rate in reversed(self._walk()):
            remaining += past / rate
            plan[module] = math.ceil(remaining * rate)
        return plan

    @torch.inference_mode()
    def resume(self, latents: torch.Tensor, start: int) -> None:
        """Rebuild the state of a decoder that has decoded a video's latents up to ``start + t``, given
        only its last ``t`` latents ``[B, C, t, h, w]``; nothing is returned.

        With ``start == 0`` the latents are the video's first ones (exact for any length). Otherwise the
        first of them is treated as a mid-video latent whose unknown past is the replicated first
        frame; when ``t >= history_latents()`` that guess no longer reaches the carried state, so the
        next :meth:`decode` returns exactly the frames of a decoder that saw the whole video. The
        latents go through the decoder in one pass and every block only gets the input frames that
        can still reach the state (with per-frame attention): the full-resolution blocks see about
        one latent's frames, so a resume costs a fraction of decoding ``t`` latents.
        """
        if latents.ndim != 5 or latents.shape[2] == 0:
            raise ValueError(f"expected latents [B, C, t>0, h, w], got {tuple(latents.shape)}")
        self.reset()
        self.latents_decoded = int(start)
        param = next(self.decoder.parameters())
        z = latents.to(device=param.device, dtype=param.dtype) / self.vae.config.scaling_factor
        if self.attention != "frame":  # frame-causal attention keeps every frame's keys: no trimming
            for piece in z.split(self.latents_per_step, dim=2):
                self._pass(piece)
        else:
            self._pass(z, trim=self._trim_plan())

    @property
    def frames_decoded(self) -> int:
        ratio = self.vae.temporal_compression_ratio
        return ratio * (self.latents_decoded - 1) + 1 if self.latents_decoded else 0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode the next latent frames ``[B, C, t, h, w]``; returns float32 video in [0, 1]."""
        return (self.decode_raw(latents).float() / 2 + 0.5).clamp(0, 1)

    @torch.inference_mode()
    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Like :meth:`decode`, but the decoder's own output: about [-1, 1], in the VAE's dtype."""
        if latents.ndim != 5 or latents.shape[2] == 0:
            raise ValueError(f"expected latents [B, C, t>0, h, w], got {tuple(latents.shape)}")
        param = next(self.decoder.parameters())
        z = latents.to(device=param.device, dtype=param.dtype) / self.vae.config.scaling_factor
        parts = [self._pass(piece) for piece in z.split(self.latents_per_step, dim=2)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    # -- the decoder, walked ------------------------------------------------------------------------
    def _pass(self, z: torch.Tensor, trim: dict | None = None) -> torch.Tensor:
        d = self.decoder
        first = self.latents_decoded == 0

        def keep(module, x: torch.Tensor) -> torch.Tensor:  # resume: drop frames that cannot matter
            nonlocal first
            n = trim.get(module) if trim else None
            if not n or x.shape[2] <= n:
                return x
            first = False  # the video's first frame is gone: no first-frame rule further on
            return x[:, :, -n:]

        count = z.shape[2]
        z = keep(d.conv_in, z)
        h = self._conv(d.conv_in, z) + z.repeat_interleave(repeats=d.repeat, dim=1)
        mid = d.mid_block
        h = self._resnet(mid.resnets[0], keep(mid.resnets[0], h))
        for attention, resnet in zip(mid.attentions, mid.resnets[1:]):
            if attention is not None:
                h = self._attention(attention, h)
            h = self._resnet(resnet, keep(resnet, h))
        for block in d.up_blocks:
            for resnet in block.resnets:
                h = self._resnet(resnet, keep(resnet, h))
            for upsampler in block.upsamplers or ():
                h = self._upsample(upsampler, keep(upsampler, h), first)
        h = self._conv(d.conv_out, d.conv_act(d.norm_out(keep(d.conv_out, h))))
        self.latents_decoded += count
        return h

    def _conv(self, module, x: torch.Tensor) -> torch.Tensor:
        """``HunyuanVideo15CausalConv3d`` with the past taken from the previous call."""
        pad_w0, pad_w1, pad_h0, pad_h1, past, future = module.time_causal_padding
        if past == 0:
            return module.conv(F.pad(x, module.time_causal_padding, mode=module.pad_mode))
        previous = self._history.get(module)
        if previous is None:  # the video's start: replicate the first frame, as the module does
            previous = x[:, :, :1].expand(-1, -1, past, -1, -1)
            padded = F.pad(x, module.time_causal_padding, mode=module.pad_mode)
        else:
            padded = F.pad(torch.cat([previous, x], dim=2), (pad_w0, pad_w1, pad_h0, pad_h1, 0, future),
                           mode=module.pad_mode)
        # the last `past` frames of [previous, x], in their own storage so the big input can be freed
        tail = x[:, :, -past:] if x.shape[2] >= past else torch.cat([previous, x], dim=2)[:, :, -past:]
        self._history[module] = tail.clone()
        return module.conv(padded)

    def _resnet(self, block, x: torch.Tensor) -> torch.Tensor:
        h = self._conv(block.conv1, block.nonlinearity(block.norm1(x)))
        h = self._conv(block.conv2, block.nonlinearity(block.norm2(h)))
        residual = block.conv_shortcut(x) if block.conv_shortcut is not None else x
        return h + residual

    def _upsample(self, module, x: torch.Tensor, first: bool) -> torch.Tensor:
        """``HunyuanVideo15Upsample``: the first-frame rule applies to the video's first latent only."""
        rearrange = module._dcae_upsample_rearrange
        h = self._conv(module.conv, x)
        if not module.add_temporal_upsample:
            shortcut = rearrange(x.repeat_interleave(repeats=module.repeats, dim=1), r1=1, r2=2, r3=2)
            return rearrange(h, r1=1, r2=2, r3=2) + shortcut
        hs, shortcuts = [], []
        if first:
            h_first = rearrange(h[:, :, :1], r1=1, r2=2, r3=2)
            hs.append(h_first[:, : h_first.shape[1] // 2])
            x_first = rearrange(x[:, :, :1], r1=1, r2=2, r3=2)
            shortcuts.append(x_first.repeat_interleave(repeats=module.repeats // 2, dim=1))
            h, x = h[:, :, 1:], x[:, :, 1:]
        if x.shape[2]:
            hs.append(rearrange(h, r1=2, r2=2, r3=2))
            shortcuts.append(rearrange(x, r1=2, r2=2, r3=2).repeat_interleave(repeats=module.repeats, dim=1))
        return _cat_time(hs) + _cat_time(shortcuts)

    def _attention(self, module, x: torch.Tensor) -> torch.Tensor:
        """``HunyuanVideo15AttnBlock``: per frame (``"frame"``) or frame-causal with a K/V cache."""
        identity = x
        x = module.norm(x)
        q, k, v = module.to_q(x), module.to_k(x), module.to_v(x)
        batch, channels, frames, height, width = q.shape
        hw = height * width

        if self.attention == "frame":  # every frame on its own: the frames become the batch

            def frames_as_batch(t: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B*T, 1, H*W, C]
                return t.permute(0, 2, 3, 4, 1).reshape(batch * frames, 1, hw, channels)

            out = F.scaled_dot_product_attention(frames_as_batch(q), frames_as_batch(k), frames_as_batch(v))
        else:

            def tokens(t: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W] -> [B, 1, T*H*W, C]
                return t.reshape(batch, channels, frames * hw).permute(0, 2, 1).unsqueeze(1)

            q, k, v = tokens(q), tokens(k), tokens(v)
            cached = self._keys_values.get(module)
            if cached is not None:
                k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
            else:
                k, v = k.contiguous(), v.contiguous()
            self._keys_values[module] = (k, v)
            past = k.shape[2] // hw - frames
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q[:, :, f * hw : (f + 1) * hw].contiguous(),
                        k[:, :, : (past + f + 1) * hw],
                        v[:, :, : (past + f + 1) * hw],
                    )
                    for f in range(frames)
                ],
                dim=2,
            )
        out = out.reshape(batch, frames, height, width, channels).permute(0, 4, 1, 2, 3)
        return module.proj_out(out) + identity


def _cat_time(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
