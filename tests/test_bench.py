"""The benchmark runs end to end at tiny size (CI) and its FLOP model is right."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.dit.config import WorldPlayConfig
from pipeline.tools.bench import main, pass_flops


def test_tiny_benchmark_runs_both_modes(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--tiny", "--modes", "ar", "bidirectional", "--warmup", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] and report["command"].startswith("python -m pipeline.bench")
    assert set(report["warm_up_seconds"]) == {"ar_distilled", "bidirectional"} and report["compiled"] is False
    ar, bi = report["runs"]
    assert (ar["mode"], ar["frames"], ar["steps"]) == ("ar", 29, 4)
    assert (bi["mode"], bi["frames"], bi["steps"]) == ("bidirectional", 61, 30)
    # AR: a text pass, one context pass (chunk 1) and 4 steps per chunk were traced
    assert set(ar["chunks"]) == {"0", "1"}
    assert set(ar["chunks"]["1"]) == {"context", "step"}
    assert ar["time_to_first_frames_seconds"] > 0
    assert ar["h264_encode_seconds"] > 0 and ar["h264_tail_seconds"] >= 0 and ar["dit_pflop"] >= 0
    # frames stream out chunk by chunk, the first chunk well before the end
    assert [c["frames"] for c in ar["frames_handed_over"]] == [13, 16]
    assert ar["frames_handed_over"][0]["at_seconds"] == ar["time_to_first_frames_seconds"]
    assert ar["time_to_first_frames_seconds"] < ar["generate_seconds"]
    assert [c["frames"] for c in bi["frames_handed_over"]] == [61]  # one chunk of 16 latents
    assert {"prepare_image", "encode_prompt", "denoise", "decode"} <= set(ar["stage_seconds"])


def test_flop_model_matches_hand_count():
    cfg = WorldPlayConfig.full()
    c, m, layers = 2048, 8192, 54
    n, keys = 6240, 38000
    linear = n * (5 * 2 * c * c + 2 * 2 * c * m)  # q, k, v, proj, prope_proj + the two MLP matmuls
    attention = 2 * 4 * n * keys * c  # two branches, QK^T and AV
    assert pass_flops(cfg, "step", n, keys) == layers * (linear + attention)
    assert pass_flops(cfg, "text", 0, 0) == 0.0
    n_ctx, ctx_keys = 31200, 31500  # a context pass: its last layer only projects k and v
    full_layer = n_ctx * (5 * 2 * c * c + 2 * 2 * c * m) + 2 * 4 * n_ctx * ctx_keys * c
    assert pass_flops(cfg, "context", n_ctx, ctx_keys) == (layers - 1) * full_layer + n_ctx * 2 * 2 * c * c


def test_vae_decode_comparison_runs_and_checks_equality(capsys):
    """--vae-decode: every path decodes the same video; the causal one equals the untiled decode,
    the tiled one differs at its seams."""
    assert main(["--vae-decode", "--tiny", "--frames", "9", "--width", "320", "--height", "288",
                 "--vae-steps", "1", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by_variant = {row["variant"]: row for row in rows}
    assert list(by_variant) == ["diffusers, untiled", "diffusers, 256-px tiles",
                                "causal, 1 latent(s) per pass", "causal, 3 latent(s) per pass",
                                "frame attention (worker default), 1 latent per pass"]
    assert all(row["frames"] == 9 and row["seconds"] > 0 for row in rows)
    assert by_variant["diffusers, untiled"]["output_std"] > 0
    assert by_variant["diffusers, 256-px tiles"]["max_abs_diff_vs_first"] > 1e-4
    for n in (1, 3):
        assert by_variant[f"causal, {n} latent(s) per pass"]["max_abs_diff_vs_first"] < 1e-5


def test_one_build_runs_every_attention_choice(tmp_path, monkeypatch):
    """--attention: the same models, one measured run per kernel choice, each labelled with the
    kernel that actually ran (on the CPU the FlashAttention choices fall back to SDPA)."""
    monkeypatch.delenv("WORLDPLAY_ATTENTION", raising=False)
    out = tmp_path / "bench.json"
    assert main(["--tiny", "--modes", "ar", "--attention", "sdpa", "math", "fa4", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert [(r["attention"], r["attention_kernel"]) for r in runs] == [("sdpa", "sdpa"), ("math", "math"),
                                                                       ("fa4", "sdpa")]
    assert all(r["mode"] == "ar" and r["frames"] == 29 and r["dit_seconds"] > 0 for r in runs)
    assert report["attention_at_start"] == "sdpa" and report["attention_prepare_seconds"] >= 0
    assert set(report["warm_up_seconds_per_attention"]) == {"sdpa", "math", "fa4"}
    assert "WORLDPLAY_ATTENTION" not in os.environ  # the caller's environment is left as it was


def test_all_to_all_bytes_model():
    from pipeline.dit.config import WorldPlayConfig
    from pipeline.tools.bench import all_to_all_bytes

    config = WorldPlayConfig.tiny()  # hidden 64, 2 layers
    c, out = config.hidden_size, config.out_channels
    assert all_to_all_bytes(config, "step", 10, 50, 1) == 0.0
    # 2 ranks: half of every tensor moves; q, k, v in and two outputs back per layer, bf16
    assert all_to_all_bytes(config, "step", 10, 50, 2) == 2 * 5 * 10 * c * 2 * 0.5 + 10 * out * 2 * 0.5
    # a context pass's last layer sends only k and v; no output is gathered
    assert all_to_all_bytes(config, "context", 10, 50, 4) == (5 + 2) * 10 * c * 2 * 0.75
    # joint: 10 image tokens (5 tensors) and 6 text tokens (4 tensors) per layer
    assert all_to_all_bytes(config, "joint", 10, 16, 2) == 2 * (5 * 10 + 4 * 6) * c + 10 * out


def test_rollout_passes_reproduce_the_measured_flops():
    """The pass list the multi-GPU model uses gives the FLOPs the H100 traces counted (docs/PERFORMANCE.md:
    AR 10.44 PFLOP, bidirectional 30 steps 197.1 PFLOP; text length assumed, hence 1 %)."""
    from pipeline.dit.config import WorldPlayConfig
    from pipeline.tools.bench import rollout_passes

    config = WorldPlayConfig.full()
    for mode, measured in (("ar", 10.44e15), ("bidirectional", 197.1e15)):
        flops = sum(p["count"] * pass_flops(config, p["kind"], p["query_tokens"], p["key_tokens"])
                    for p in rollout_passes(mode))
        assert flops == pytest.approx(measured, rel=0.01)
