"""Reading videos: a phone clip's frames, upright, for ingest to take photos from.

    info = probe_video(path, max_pixels)                  # VideoInfo, or UnreadableVideo saying why
    for index, seconds, image in decode_frames(path, info, (w, h)):  # every frame, [h, w, 3] uint8 sRGB
        ...
    for index, seconds, image in decode_frames(path, info, (w, h), upright=True, wanted={12, 40}):
        ...

PyAV decodes (its wheels carry FFmpeg and its codecs: H.264, HEVC, VP9, AV1, ProRes; no system
package needed). Phones store a portrait video as landscape frames and name the turn that shows
them upright in the track's display matrix; `upright=True` applies it, as every player does.
Frames come in decode order, numbered from 0, the same numbers on every pass over a file.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".3gp", ".mts", ".m2ts", ".mpg",
                            ".mpeg", ".wmv"})
# The camera ingest names for a video's frames ("video:clip.mp4"): one camera, whose intrinsics
# SfM estimates from all its frames (stages/poses/camera_groups.py).
VIDEO_CAMERA = "video:"


class UnreadableVideo(Exception):
    """The file is no video we can use; the message says why, for the user."""


@dataclass(frozen=True)
class VideoInfo:
    width: int  # upright, as a player shows it
    height: int
    rotation: int  # degrees counter-clockwise the stored frames turn to stand upright: 0, 90, 180, 270
    fps: float
    frames: int  # as the container declares it (0 when it does not)
    codec: str

    def describe(self) -> str:
        """'1080x1920 h264 at 30 fps, stored turned, shown 90 deg clockwise' for the log and report."""
        turn = {90: "90 deg counter-clockwise", 180: "180 deg", 270: "90 deg clockwise"}.get(self.rotation)
        return f"{self.width}x{self.height} {self.codec} at {self.fps:.0f} fps" + (
            f", stored turned, shown {turn}" if turn else "")


def _errors():
    """What PyAV raises for a file it cannot demux or decode."""
    import av

    return av.FFmpegError, OSError, ValueError


def _why(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)  # FFmpeg's sentence, without errno and file name


def probe_video(path: Path, max_pixels: int) -> VideoInfo:
    """What a video holds, checked by decoding its first frame; refuses files over `max_pixels`
    a frame (before decoding any) and files with no decodable video stream."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableVideo("no video stream in it")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            if w * h > max_pixels:
                raise UnreadableVideo(f"{w}x{h} = {w * h:,} pixels a frame is over the limit of "
                                      f"{max_pixels:,} (ingest.max_pixels)")
            first = next(container.decode(stream), None)
            if first is None:
                raise UnreadableVideo("not one frame of it decodes")
            rotation = round(first.rotation / 90) % 4 * 90
            rate = stream.average_rate or stream.guessed_rate
            info = VideoInfo(w if rotation in (0, 180) else h, h if rotation in (0, 180) else w, rotation,
                             float(rate) if rate else 0.0, int(stream.frames or 0), stream.codec_context.name)
    except UnreadableVideo:
        raise
    except _errors() as e:
        raise UnreadableVideo(f"not a video neroic can decode ({_why(e)})") from None
    if min(info.width, info.height) < 16:
        raise UnreadableVideo(f"too small ({info.width}x{info.height} pixels)")
    return info


def decode_frames(path: Path, info: VideoInfo, size: tuple[int, int], upright: bool = False,
                  wanted: set[int] | None = None, threads: int = 0) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame number, its time in seconds, [h, w, 3] uint8 sRGB) for every frame, or only the
    `wanted` ones (stopping after the last). `size` = (w, h) is the upright size; without `upright`
    the frame keeps its stored orientation (h and w swapped for a turned video: enough to judge
    sharpness and motion). A decoding error midway raises UnreadableVideo after the frames before
    it were yielded."""
    import av

    k = info.rotation // 90
    stored = size if k % 2 == 0 else size[::-1]
    last = max(wanted) if wanted else None
    index = -1
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame-parallel decoding: several times faster on HD video
            stream.codec_context.thread_count = threads
            for index, frame in enumerate(container.decode(stream)):
                if wanted is None or index in wanted:
                    image = frame.to_ndarray(width=stored[0], height=stored[1], format="rgb24", interpolation="AREA")
                    if upright and k:
                        image = np.ascontiguousarray(np.rot90(image, k))
                    yield index, float(frame.time or 0.0), image
                if last is not None and index >= last:
                    return
    except _errors() as e:
        raise UnreadableVideo(f"decoding stopped after frame {index} ({_why(e)})") from None
