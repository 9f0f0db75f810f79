"""faster-whisper alone: the baseline every figure of the benchmark is compared with.

Runs in a process of its own (started by `bench.harness.whisper_alone`) so that its memory is
that of faster-whisper and nothing else, and so that the benchmark's own process never loads
CTranslate2. The model is loaded once and the file transcribed `--times` times in a loop with
the settings the service reads (WHISPER_MODEL, WHISPER_DEVICE, WHISPER_COMPUTE_TYPE,
WHISPER_CPU_THREADS; beam 5, no VAD, as a run's defaults), each transcript consumed to the end.
It decodes sequentially or in batches as a worker's job would for this file (`--batch
service`, the default: `engine.batch_size_for`), so that both sides do the same work.

Usage: .venv/bin/python -m bench.raw AUDIO [--times 10] [--batch service|0|N]
Prints one JSON object: seconds per pass, the text of the last pass, and VmRSS / VmHWM in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def rss_mib(key: str) -> float:
    """`VmRSS` or `VmHWM` of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(key)


def load_model() -> Any:
    """The service's model with the service's settings (read from the same environment)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lingoloop.settings")
    from django.conf import settings
    from faster_whisper import WhisperModel

    from transcription.engine import resolve_model

    source = resolve_model(settings.WHISPER_MODEL)
    return WhisperModel(
        source,
        device=settings.WHISPER_DEVICE,
        compute_type=settings.WHISPER_COMPUTE_TYPE,
        cpu_threads=settings.WHISPER_CPU_THREADS,
        local_files_only=Path(source).is_dir(),
    )


def service_batch(audio: Path) -> int:
    """The batch size a worker's job uses for this file (0: sequential)."""
    import av
    from django.conf import settings

    from transcription.engine import Options, batch_size_for

    with av.open(str(audio)) as container:
        duration_ms = int((container.duration or 0) / 1000)
    options = Options(model=settings.WHISPER_MODEL)
    return batch_size_for(options, duration_ms=duration_ms, allow_batched=True)


def transcribe(model: Any, audio: Path, batch: int) -> str:
    """One pass over `audio`, sequential (batch 0) or batched with VAD as the engine does."""
    options: dict[str, Any] = {"beam_size": 5}
    if batch > 0:
        from faster_whisper import BatchedInferencePipeline

        segments, _ = BatchedInferencePipeline(model).transcribe(
            str(audio), batch_size=batch, vad_filter=True, without_timestamps=False, **options
        )
    else:
        segments, _ = model.transcribe(str(audio), vad_filter=False, **options)
    return " ".join(segment.text.strip() for segment in segments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path)
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--batch", default="service", help="service (default), 0 or a size")
    args = parser.parse_args()
    model = load_model()
    batch = service_batch(args.audio) if args.batch == "service" else int(args.batch)
    seconds = []
    text = ""
    for _ in range(args.times):
        started = time.perf_counter()
        text = transcribe(model, args.audio, batch)
        seconds.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "text": text,
                "batch": batch,
                "rssMib": round(rss_mib("VmRSS"), 1),
                "hwmMib": round(rss_mib("VmHWM"), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
