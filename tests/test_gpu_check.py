"""``python -m tools.gpu_check --tiny``: the one prepared GPU run, on the CPU with the tiny models, so
it cannot rot between GPU sessions. Every item runs and gives a figure or a stated skip, and the JSON
and the markdown table say the same."""

from __future__ import annotations

import json

import pytest

from tools import gpu_check
from tools.gpu_check import ITEMS, figure_cells, main, parse_markdown_table

# what cannot run on the CPU, and why it must say so
EXPECTED_SKIPS = {"stage_720p": "not timed yet", "peak_memory": "no GPU"}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    assert main(["--tiny", "--out", str(out)]) == 0
    report = json.loads((out / gpu_check.JSON_NAME).read_text())
    return report, (out / gpu_check.MD_NAME).read_text()


def test_every_item_ran_and_gave_a_figure_or_a_stated_skip(tiny_report):
    report, _ = tiny_report
    items = report["items"]
    assert list(items) == [item.name for item in ITEMS]
    for name, result in items.items():
        if name in EXPECTED_SKIPS:
            assert result["status"] == "skipped" and EXPECTED_SKIPS[name] in result["reason"], (name, result)
            continue
        assert result["status"] == "ok", (name, result.get("reason"), result.get("traceback"))
        figures = {k: v for k, v in result.items() if k not in gpu_check.HIDDEN}
        assert figures and result["headline"], name
        assert result["seconds"] >= 0 and result["expected_seconds"] > 0
    ar = items["ar_125"]
    assert ar["frames"] == 29 and ar["dit_seconds"] > 0 and ar["decode_seconds"] > 0
    assert 0 < ar["first_frames_seconds"] < ar["generate_seconds"] <= ar["total_seconds"]
    vae = items["vae_decode"]
    assert vae["chunks"] == 2 and vae["full_total_seconds"] > 0
    assert vae["fast_total_seconds"] > 0 and vae["fast_speedup"] > 0  # the tiny models carry a fast decoder
    world = items["live_world"]
    assert world["frames_per_chunk"] == [13, 16, 16] and world["first_frame_seconds"] > world["open_seconds"]
    assert world["decoder"] == "fast" and world["full_vae"]["chunk_median_seconds"] > 0  # both decoders timed
    preview = items["preview"]
    assert preview["default_first_playable_seconds"] > 0 and preview["low_latency_first_playable_seconds"] > 0
    server = items["live_server"]
    assert server["chunks"] == 3 and server["key_to_first_fragment_seconds"] > 0
    cont = items["continuation"]
    assert cont["continuation_seconds"] > 0 and cont["state_bytes"] > 0 and cont["decode_resume_seconds"] > 0
    cold = items["cold_load"]
    assert cold["bytes"] > 0 and cold["load_seconds"] > 0 and cold["read_seconds"] > 0
    bi = items["bidirectional"]
    assert (bi["measured_steps"], bi["scaled_to_steps"]) == (2, 30)
    assert bi["dit_seconds_30_steps"] > bi["dit_seconds"] and bi["frames"] == 125


def test_the_report_says_where_it_ran(tiny_report):
    report, markdown = tiny_report
    env = report["environment"]
    for key in ("date", "torch", "cuda", "cudnn", "gpu", "driver", "attention_kernel", "command", "python"):
        assert key in env, key
    assert env["tiny"] is True and env["attention_kernel"] == "sdpa" and env["torch"]
    assert env["date"] in markdown and env["torch"] in markdown and "attention kernel: sdpa" in markdown


def test_the_json_and_the_markdown_agree(tiny_report):
    report, markdown = tiny_report
    rows = parse_markdown_table(markdown)
    assert list(rows) == list(report["items"])
    for name, result in report["items"].items():
        row = rows[name]
        assert row["status"] == result["status"], name
        assert row["headline"] == (result.get("headline") or "").replace("|", "/"), name
        assert row["figures"] == figure_cells(result), name
        if result["status"] == "ok":  # every figure's value is in the table as written in the JSON
            for key, value in result.items():
                if key not in gpu_check.HIDDEN:
                    assert f"{key} = {gpu_check._fmt(value)}" in row["figures"], (name, key)
        else:
            assert result["reason"] in markdown
        assert row["seconds"].startswith(gpu_check._fmt(result["seconds"]))


def test_the_budget_drops_the_costliest_items_first(tmp_path):
    """--budget: with 12 s for set-up (10) + continuation (3) + preview (2) on the tiny table, the
    continuation (the costliest) is dropped with the reason; preview, which needs no models, runs."""
    out = tmp_path / "budget"
    assert main(["--tiny", "--out", str(out), "--budget", "12",
                 "--only", "continuation", "preview", "stage_720p"]) == 0
    items = json.loads((out / gpu_check.JSON_NAME).read_text())["items"]
    assert items["continuation"]["status"] == "skipped"
    assert items["continuation"]["reason"].startswith("budget: ") and "costliest" in items["continuation"]["reason"]
    assert items["preview"]["status"] == "ok"
    assert items["ar_125"] == {"status": "skipped", "reason": "not selected (--only / --skip)"}
    assert "budget: " in (out / gpu_check.MD_NAME).read_text()


def test_no_gpu_without_tiny_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--out", str(tmp_path)]) == 2
    assert "--tiny" in capsys.readouterr().err


def test_the_paced_preview_gives_a_first_playable_segment_and_ends_its_uploader(tmp_path):
    """The preview item's paced run cuts and publishes segments into the in-memory storage, and its
    uploader thread ends (as run_job ends it)."""
    import threading

    from pipeline.video import synthetic_pan

    storage = gpu_check.MemoryStorage()
    run = gpu_check._paced(synthetic_pan(45, 64, 48), storage, tmp_path, preview_on=True, first=0.05,
                           gap=0.05, name="copy")
    assert run["first_playable_s"] > 0 and run["segments"] == 3 and run["mp4_bytes"] > 0
    assert any(key.endswith("index.m3u8") for key in storage.objects)
    assert not [t for t in threading.enumerate() if t.name == "hls-preview" and t.is_alive()]
