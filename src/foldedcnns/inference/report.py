"""What a ``predict`` or ``scrape`` run did: rows, time per stage, faults, per input and in all."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from foldedcnns.errors import DataError


@dataclass(frozen=True)
class SourceResult:
    """What happened to one input: rows written, time per stage, the fault if decoding stopped early, and the
    damaged video packets skipped mid-stream (as ffmpeg skips them)."""

    source: str
    kind: str
    output: str
    rows: int
    wall_seconds: float
    decode_seconds: float
    model_seconds: float
    error: str | None = None
    damaged_packets: int = 0
    decoded: int | None = None
    decoders: int = 1


@dataclass(frozen=True)
class StageThroughput:
    """Frames per second of each stage: from the run itself (``measured="in the run"``: frames over the
    decoding thread's busy time, and over the models' time), or measured alone on the first ``frames``
    frames decoded again (``--profile-frames``)."""

    frames: int
    decode_fps: float
    model_fps: float
    measured: str = "in the run"


@dataclass(frozen=True)
class PredictReport:
    """Results of a prediction run over all sources, with throughput figures (frames/s)."""

    results: list[SourceResult]
    fold: int
    batch_size: int
    backend: str
    device: str
    wall_seconds: float
    stages: StageThroughput | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return sum(r.rows for r in self.results)

    @property
    def end_to_end_fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def errors(self) -> list[str]:
        return [f"{r.source}: {r.error}" for r in self.results if r.error]

    @property
    def efficiency(self) -> float | None:
        """End-to-end frames/s over the slower of decode-only and model-only frames/s."""
        if self.stages is None or min(self.stages.decode_fps, self.stages.model_fps) <= 0:
            return None
        return self.end_to_end_fps / min(self.stages.decode_fps, self.stages.model_fps)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [asdict(r) for r in self.results], "fold": self.fold, "batch_size": self.batch_size,
                "backend": self.backend, "device": self.device, "frames": self.frames,
                "wall_seconds": self.wall_seconds, "end_to_end_fps": self.end_to_end_fps,
                "stages": None if self.stages is None else asdict(self.stages), "efficiency": self.efficiency,
                "errors": self.errors, **self.extra}

    def raise_for_errors(self) -> None:
        """Raise one DataError naming every input whose decoding stopped early (their rows are kept)."""
        failed = [r for r in self.results if r.error]
        if not failed:
            return
        each = "; ".join(f"{r.error} (" + (f"kept the {r.rows} rows decoded before it in {r.output})" if r.rows
                                           else "no frame decoded; no CSV written)") for r in failed)
        prefix = f"{len(failed)} of {len(self.results)} inputs stopped early: " if len(self.results) > 1 else ""
        raise DataError(prefix + each)
