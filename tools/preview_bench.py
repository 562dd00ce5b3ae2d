"""What the live preview costs and how soon it plays (a development tool; needs moto, the S3 server
the tests use, which the production image does not install).

    python -m tools.preview_bench --paced [--first 1.42 --gap 2.9 --repeat 3]
    WORLDPLAY_PREVIEW_LOW_LATENCY=1 python -m tools.preview_bench --paced
    python -m tools.preview_bench --tiny [--repeat 3]

``--paced``: 125 frames of 832x480 real-looking content (``pipeline.video.synthetic_pan``) handed to
the worker's writer the way the AR rollout hands them over on an H100 (13 frames after ``--first``
seconds, then 16 every ``--gap`` seconds; sleeping stands in for the GPU), then the MP4 upload, as
``run_job`` does; once without and once with the preview, uploading to an S3 server on 127.0.0.1.
Reports the time from the start to the first playable segment (listed in the playlist), the
job's total and the share the preview adds, the MP4 size, and the CPU seconds.

``--tiny``: the real handler with the tiny random-weight models (what CI runs), preview off and on:
the time from the job's start to the progress update that first carries ``preview_url``, and the
job's total.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _moto(bucket: str):
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"MINIO_ENDPOINT": f"http://127.0.0.1:{port}", "MINIO_ACCESS_KEY": "bench",
           "MINIO_SECRET_KEY": "bench-secret-key", "MINIO_BUCKET": bucket,
           "MINIO_REGION": "us-east-1"}
    os.environ.update(env)
    from worker.storage import Storage

    for _ in range(200):
        try:
            Storage.from_env().ensure_bucket()
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.05)
    return server


def paced_once(frames, storage, workdir: Path, *, preview_on: bool, first: float, gap: float,
               name: str) -> dict:
    from pipeline.video import Mp4Writer, ar_chunks
    from worker.preview import LivePreview

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    preview = LivePreview(storage, f"bench/{name}/preview") if preview_on else None
    path = workdir / f"{name}.mp4"
    from worker.preview import writer_options

    with Mp4Writer(path, 24, background=True, **writer_options(preview)) as writer:
        for index, chunk in enumerate(ar_chunks(frames)):
            time.sleep(first if index == 0 else gap)
            writer.write(chunk)
        last_chunk = time.perf_counter()
        writer.close()
    if preview is not None:
        preview.end()
    storage.put_file(f"bench/{name}/video.mp4", path, content_type="video/mp4")
    storage.presigned_get(f"bench/{name}/video.mp4")
    if preview is not None:
        preview.finish()  # what run_job does: one wait for the closed, freshly signed playlist
    end = time.perf_counter()
    return {
        "total_s": end - t0,
        "after_last_chunk_s": end - last_chunk,
        "first_playable_s": (preview.first_segment_at - t0) if preview and preview.first_segment_at
        else None,
        "segments": preview.segments if preview else None,
        "mp4_bytes": path.stat().st_size,
        "cpu_s": time.process_time() - cpu0,
    }


def paced_estimate(frames: int, first: float, gap: float, repeat: int) -> float:
    """Seconds a --paced run takes: 2 runs (preview off, on) per repeat, each paced like an AR job
    (the first chunk of 13 frames after ``first``, one of 16 frames every ``gap``), ~1 s of tail."""
    chunks = 1 + max(0, -(-(frames - 13) // 16))
    return 2 * repeat * (first + gap * (chunks - 1) + 1.0)


def paced(args) -> None:
    from pipeline.video import synthetic_pan

    total = paced_estimate(args.frames, args.first, args.gap, args.repeat)
    print(f"paced: {2 * args.repeat} runs (preview off / on x {args.repeat}) at the H100's chunk cadence: "
          f"about {total:.0f} s ({total / 60:.1f} min); --repeat 1 takes a third of that", flush=True)
    from worker.storage import Storage

    server = _moto("preview-bench")
    try:
        storage = Storage.from_env()
        frames = synthetic_pan(args.frames, args.width, args.height)
        runs = {"off": [], "on": []}
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(args.repeat):
                for mode in ("off", "on"):
                    runs[mode].append(paced_once(
                        frames, storage, Path(tmp), preview_on=mode == "on", first=args.first,
                        gap=args.gap, name=f"{mode}-{rep}"))
        from worker.preview import low_latency

        print(f"paced: {args.frames} frames {args.width}x{args.height}, first chunk after "
              f"{args.first}s then one every {args.gap}s, {os.cpu_count()} CPUs, "
              f"{args.repeat} runs each, low latency {'on' if low_latency() else 'off'}")
        for mode, rows in runs.items():
            med = {k: statistics.median(r[k] for r in rows) for k in
                   ("total_s", "after_last_chunk_s", "mp4_bytes", "cpu_s")}
            line = (f"preview {mode:<3}: total median {med['total_s']:.3f}s, after the last chunk "
                    f"{med['after_last_chunk_s']:.3f}s, MP4 {med['mp4_bytes'] / 1e6:.3f} MB, "
                    f"CPU {med['cpu_s']:.2f}s")
            if mode == "on":
                firsts = [r["first_playable_s"] for r in rows]
                line += (f", first playable segment at median {statistics.median(firsts):.3f}s "
                         f"(all: {', '.join(f'{x:.3f}' for x in firsts)}), "
                         f"{rows[0]['segments']} segments")
            print(line)
        off = statistics.median(r["total_s"] for r in runs["off"])
        on = statistics.median(r["total_s"] for r in runs["on"])
        size_off = statistics.median(r["mp4_bytes"] for r in runs["off"])
        size_on = statistics.median(r["mp4_bytes"] for r in runs["on"])
        print(f"preview cost on the total: {on - off:+.3f}s ({(on - off) / off * 100:+.2f} %); "
              f"MP4 size {(size_on - size_off) / size_off * 100:+.1f} % "
              + ("(an IDR frame per chunk, x264 zerolatency)" if low_latency() else
                 "(the same encode: x264's threaded encode of 832x480 varies by a few KB run to run)"))
    finally:
        server.stop()


def tiny(args) -> None:
    from pipeline.generation.engine import WorldPlayPipeline
    from pipeline.model_files.resolve import layout_paths
    from pipeline.tools.bench import demo_image
    from pipeline.tools.tiny import write_tiny_models
    from worker import job as worker_job

    server = _moto("preview-bench-tiny")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["WORLDPLAY_TMPDIR"] = tmp
            os.environ["WORLDPLAY_MODES"] = "ar"
            root = write_tiny_models(Path(tmp) / "tiny", models=("ar_distilled",))
            pipe = WorldPlayPipeline.from_paths(layout_paths(root, ("ar_distilled",)), device="cpu",
                                                models=("ar_distilled",))
            worker_job.reset_state(loader=lambda modes: pipe)
            import base64
            import io

            buf = io.BytesIO()
            demo_image(128, 72).save(buf, "PNG")
            image = base64.b64encode(buf.getvalue()).decode()
            rows = {"off": [], "on": []}
            for rep in range(args.repeat + 1):  # the first round warms up (discarded)
                for mode in ("off", "on"):
                    first = {}
                    t0 = time.perf_counter()

                    def sender(job, payload, first=first):
                        if "preview_url" in payload and "at" not in first:
                            first["at"] = time.perf_counter() - t0

                    progress = worker_job.ProgressReporter({"id": "b"}, enabled=True,
                                                           sender=sender)
                    out = worker_job.run_job(
                        {"id": f"tiny-{mode}-{rep}", "input": {
                            "prompt": "a harbour", "image_base64": image, "pose": "w-31",
                            "seed": 1, "output": {"preview": mode == "on"}}},
                        progress=progress)
                    total = time.perf_counter() - t0
                    assert "error" not in out, out
                    if rep:
                        rows[mode].append((total, first.get("at"), out["num_frames"]))
        for mode, data in rows.items():
            line = (f"tiny {mode:<3}: {data[0][2]} frames, total median "
                    f"{statistics.median(r[0] for r in data):.3f}s")
            if mode == "on":
                line += (", preview_url in a progress update after median "
                         f"{statistics.median(r[1] for r in data):.3f}s")
            print(line)
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.preview_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--paced", action="store_true")
    what.add_argument("--tiny", action="store_true")
    parser.add_argument("--frames", type=int, default=125)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--first", type=float, default=1.42, help="seconds to the first chunk")
    parser.add_argument("--gap", type=float, default=2.9, help="seconds between chunks")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("werkzeug", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    paced(args) if args.paced else tiny(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
