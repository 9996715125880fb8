"""The settings of an ingestion run (reidkit.video.ingest) and of a live watch (reidkit.video.watch): each one
frozen object the CLI builds from its flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypeVar

from reidkit.video.pipeline import Settings, check_settings, tracker_fields

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["DEFAULT_STREAMS", "IngestOptions", "WatchOptions"]

DEFAULT_STREAMS = 4

_O = TypeVar("_O", bound="DataclassInstance")


def _with_changes(cls: type[_O], options: _O | None, changes: dict[str, Any], what: str) -> _O:
    """`options` (default: all defaults) with `changes` applied; a TypeError names the changes `cls` lacks."""
    unknown = sorted(set(changes) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"unknown {what} options: {', '.join(unknown)}")
    return replace(options if options is not None else cls(), **changes)


@dataclass(frozen=True)
class IngestOptions:
    """Every setting of an ingestion run besides the gallery and the videos (the CLI builds one from its flags).

    Inputs: ``cameras`` (one name per video; default the file's stem), ``detections`` (one MOT file per video,
    instead of a detector), ``start_times`` (seconds, one per video). Detector: ``detector`` (a registered
    detector, a catalogue name or an ONNX file: reidkit.video.detectors; default motion) and its
    ``detector_options``; ``conf``, ``detector_size``, ``person_class`` (ONNX) and ``hog_min_height``,
    ``detect_scale`` (HOG) are shorthands of those options. Model: ``weights`` (None: the gallery's own,
    else ImageNet), ``device``, ``batch_size``, ``flip``, ``engine`` (reidkit.inference). Tracklets (stored
    with each video's state: reidkit.video.pipeline.Settings): ``every``, ``chunk``, ``k``, ``min_len``,
    ``detect_every``, ``appearance``, ``embed_budget``, ``tracker`` and ``tracker_options`` (``max_age``,
    ``n_init``, ``max_cosine_distance``: shorthands of its options; None: its default). Run: ``streams``
    (videos at once), ``collection`` and ``files`` (a Milvus gallery's collection and side-file folder).
    """

    cameras: Sequence[str] | None = None
    detections: Sequence[str | os.PathLike] | None = None
    start_times: Sequence[float] | None = None
    detector: str | os.PathLike | None = None
    detector_options: Mapping[str, Any] | None = None
    conf: float = 0.25
    hog_min_height: int = 480
    detector_size: tuple[int, int] | None = None
    person_class: int = 0
    detect_scale: float = 1.0
    weights: str | os.PathLike | None = None
    device: str | None = None
    batch_size: int = 64
    flip: bool = False
    engine: str = "torch"
    every: int = 1
    chunk: int = 50
    k: int = 4
    min_len: int = 3
    detect_every: int = 1
    appearance: str = "all"
    embed_budget: int = 0
    tracker: str | None = None
    tracker_options: Mapping[str, Any] | None = None
    max_age: int | None = None
    n_init: int | None = None
    max_cosine_distance: float | None = None
    streams: int = DEFAULT_STREAMS
    collection: str | None = None
    files: str | os.PathLike | None = None

    @classmethod
    def of(cls, options: IngestOptions | None = None, **changes: Any) -> IngestOptions:
        """`options` (default: all defaults) with `changes` (keyword arguments of ingest) applied."""
        return _with_changes(cls, options, changes, "ingest")

    def settings(self) -> Settings:
        """The pipeline's Settings (what decides the tracklets), range-checked."""
        return check_settings(
            Settings(
                every=int(self.every),
                chunk=int(self.chunk),
                k=int(self.k),
                min_len=int(self.min_len),
                detect_every=int(self.detect_every),
                appearance=str(self.appearance),
                embed_budget=int(self.embed_budget),
                **tracker_fields(
                    self.max_age,
                    self.n_init,
                    self.max_cosine_distance,
                    self.tracker,
                    None if self.tracker_options is None else dict(self.tracker_options),
                ),
            )
        )


@dataclass(frozen=True)
class WatchOptions:
    """Every setting of a live watch besides the gallery and the cameras (reidkit.video.watch.watch; the CLI
    builds one from the flags of ``reidkit watch``).

    ``links`` (the camera links of the identities, as ``reidkit identities --links`` takes them), ``weights`` (None: the gallery's
    own, else ImageNet), ``device``, ``engine`` (reidkit.inference; default int8 where the machine runs it fast),
    ``collection`` (a Milvus gallery's), ``detector`` (a registered or catalogue detector, an ONNX file, or "mot":
    each camera's ``detections`` file, the default when every camera has one; None: motion) and its
    ``detector_options``, ``settings`` (the tracklet Settings; None: appearance "needed", an embedding budget of
    8), ``commit_every`` and ``identities_every`` (seconds between commits and identity updates), ``retain``
    (seconds a tracklet is kept after it ends; None: for ever), ``buffer`` (frames each camera's source holds).
    """

    links: Any = None
    weights: str | None = None
    device: str | None = None
    engine: str = "auto-int8"
    collection: str | None = None
    detector: str | None = None
    detector_options: dict[str, Any] | None = None
    settings: Settings | None = None
    commit_every: float = 10.0
    identities_every: float = 60.0
    retain: float | None = None
    buffer: int = 4

    @classmethod
    def of(cls, options: WatchOptions | None = None, **changes: Any) -> WatchOptions:
        """`options` (default: all defaults) with `changes` (keyword arguments of watch) applied."""
        return _with_changes(cls, options, changes, "watch")
