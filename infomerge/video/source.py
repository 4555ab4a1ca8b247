"""Where a video comes from: a file, an http(s) URL, an RTSP/RTMP/UDP/SRT stream, or a camera;
opened with PyAV (FFmpeg inside its wheel), every failure turned into an error naming its cause.

Source strings:
    ``path/to/file.mp4``              a local file
    ``http://...``, ``https://...``    a file or live stream served over HTTP (FFmpeg's http protocol)
    ``rtsp://``, ``rtmp://``, ``udp://``, ``srt://``   a live stream
    ``0``, ``1``, ... or ``/dev/video0``               a V4L2 camera (Linux)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from infomerge.errors import (
    CorruptVideoError,
    NotAVideoError,
    NoVideoStreamError,
    StillImageError,
    UnsupportedCodecError,
    VideoNotFoundError,
    VideoSourceError,
)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp")
URL_SCHEMES = ("http", "https", *LIVE_SCHEMES)
# seconds: opening a URL, and any single read from it, give up after these
OPEN_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 15.0

# Leading bytes of the containers we recognise as "a video file" (to tell a corrupt video apart
# from a file that was never a video). (offset, magic)
_CONTAINER_MAGIC = (
    (4, b"ftyp"),  # MP4 / MOV / 3GP
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska / WebM (EBML)
    (0, b"RIFF"),  # AVI
    (0, b"FLV"),
    (0, b"\x00\x00\x01\xba"),  # MPEG-PS
    (0, b"\x47"),  # MPEG-TS sync byte
    (0, b"OggS"),
)
# FFmpeg demuxers that read one still picture (image2 and the *_pipe family)
_IMAGE_FORMATS = re.compile(r"^(image2|\w+_pipe)$")
# what to install for codecs a stock PyAV wheel may lack (the message's fix)
_CODEC_HINTS = {
    "av1": "AV1: PyAV's wheels decode it with libdav1d; upgrade PyAV (`pip install -U av`), or "
    "transcode: `ffmpeg -i IN -c:v libx264 OUT.mp4`",
    "hevc": "HEVC/H.265: upgrade PyAV (`pip install -U av`), or transcode: "
    "`ffmpeg -i IN -c:v libx264 OUT.mp4`",
    "vvc": "VVC/H.266: needs an FFmpeg >= 7.1 build; upgrade PyAV (`pip install -U av`), or transcode "
    "with an ffmpeg that has it: `ffmpeg -i IN -c:v libx264 OUT.mp4`",
}


@dataclass(frozen=True)
class Source:
    """A parsed source string.

    Attributes:
        name: the string as the user gave it (reported unchanged in messages).
        url: what FFmpeg opens (a path, a URL, or ``/dev/videoN``).
        kind: ``"file"``, ``"url"`` (http(s), may be a file or live), ``"stream"`` (live protocol)
            or ``"camera"``.
        format: FFmpeg input format to force (``"v4l2"`` for cameras), else None.
    """

    name: str
    url: str
    kind: str
    format: str | None = None

    @property
    def live(self) -> bool:
        """Known to be live before opening (streams, cameras); http(s) is decided after opening."""
        return self.kind in ("stream", "camera")


def parse_source(source: str | os.PathLike) -> Source:
    """Classify ``source`` (see the module docstring); no I/O beyond ``stat``.

    Raises:
        VideoNotFoundError: a local path or camera device that does not exist.
        NotAVideoError: an empty file.
    """
    name = os.fspath(source)
    scheme = name.split("://", 1)[0].lower() if "://" in name else ""
    if scheme in ("http", "https"):
        return Source(name, name, "url")
    if scheme in LIVE_SCHEMES:
        return Source(name, name, "stream")
    if scheme == "file":
        name = name[len("file://") :]
    if name.isdigit() or re.fullmatch(r"/dev/video\d+", name):
        device = f"/dev/video{name}" if name.isdigit() else name
        if not os.path.exists(device):
            raise VideoNotFoundError(
                device, "no such camera device (is a camera connected, and is this Linux with V4L2?)"
            )
        return Source(name, device, "camera", "v4l2")
    if scheme:
        raise VideoSourceError(name, f"unsupported URL scheme {scheme!r}; use one of {URL_SCHEMES}")
    path = Path(name)
    if not path.exists():
        raise VideoNotFoundError(path, "no such file")
    if not path.is_file():
        raise VideoNotFoundError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise NotAVideoError(path, "the file is empty (0 bytes)")
    return Source(name, str(path), "file")


def _looks_like_container(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(16)
    return any(head[off : off + len(magic)] == magic for off, magic in _CONTAINER_MAGIC)


def _ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's own words for an error (PyAV's ``strerror``), without PyAV's repr decoration."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return str(reason).strip()


def open_source(src: Source):
    """Open ``src`` with PyAV; return ``(container, video_stream)``.

    The stream's decoder is checked here, before any decoding work.

    Raises:
        NotAVideoError: a local file FFmpeg does not recognise as media.
        CorruptVideoError: a local file with a video container's signature that will not open.
        StillImageError: a still picture (PNG, JPEG, ...): refused, see docs/video.md.
        NoVideoStreamError: media without a video stream ("audio only" when it has audio).
        UnsupportedCodecError: a video codec PyAV's FFmpeg cannot decode (named, with the fix).
        VideoSourceError: a URL, stream or camera that FFmpeg cannot open (its reason, unchanged).
    """
    import av

    options = {}
    if src.kind == "stream" and src.url.lower().startswith("rtsp"):
        options["rtsp_transport"] = "tcp"
    try:
        container = av.open(
            src.url,
            format=src.format,
            options=options,
            timeout=None if src.kind == "file" else (OPEN_TIMEOUT_S, READ_TIMEOUT_S),
        )
    except av.FFmpegError as exc:
        reason = _ffmpeg_reason(exc)
        if src.kind != "file":
            raise VideoSourceError(src.name, f"cannot open {src.kind} {src.name}: {reason}") from exc
        if _looks_like_container(src.url):
            raise CorruptVideoError(
                src.url, f"video container is truncated or corrupt: the decoder cannot open it ({reason})"
            ) from exc
        raise NotAVideoError(
            src.url, f"not a video file: no known container format (mp4, mkv, webm, avi, ...) ({reason})"
        ) from exc
    try:
        return container, _video_stream(src, container)
    except BaseException:
        container.close()
        raise


def _video_stream(src: Source, container):
    fmt = container.format.name
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        if "audio" in kinds:
            what = f"audio only ({len(container.streams.audio)} audio stream(s), no video stream)"
        else:
            what = f"no video stream (streams: {', '.join(kinds) or 'none'})"
        raise NoVideoStreamError(src.name, f"{what}; give a file with a video track")
    stream = container.streams.video[0]
    if _IMAGE_FORMATS.match(fmt):
        raise StillImageError(
            src.name,
            f"a still image ({fmt.replace('_pipe', '')}), not a video; infomerge answers questions about "
            "videos. To ask about one picture, make a one-second video of it: "
            "`ffmpeg -loop 1 -i IMAGE -t 1 -pix_fmt yuv420p image.mp4`",
        )
    codec = _codec_name(stream)
    if not _has_decoder(codec):
        hint = _CODEC_HINTS.get(
            codec,
            "upgrade PyAV (`pip install -U av`), or transcode with an ffmpeg that reads it: "
            "`ffmpeg -i IN -c:v libx264 OUT.mp4`",
        )
        tag = _codec_tag(stream)
        raise UnsupportedCodecError(
            src.name, f"unsupported video codec {codec!r}{tag}: PyAV's FFmpeg has no decoder for it. {hint}"
        )
    return stream


def _codec_name(stream) -> str:
    ctx = stream.codec_context
    name = ctx.codec.name if ctx is not None and ctx.codec is not None else None
    if name is None or name == "none":
        return "unknown"
    # the codec descriptor's name (h264, av1, ...) rather than the decoder's (libdav1d, ...)
    return getattr(ctx.codec, "canonical_name", None) or name


def _codec_tag(stream) -> str:
    ctx = stream.codec_context
    tag = getattr(ctx, "codec_tag", None) if ctx is not None else None
    return f" (container tag {tag!r})" if tag and str(tag).strip("\x00") else ""


def _has_decoder(codec: str) -> bool:
    """Whether PyAV's FFmpeg can decode ``codec`` (a codec descriptor name)."""
    import av

    if codec == "unknown":
        return False
    try:
        av.codec.Codec(codec, "r")
    except (av.codec.codec.UnknownCodecError, ValueError):
        return False
    return True
