"""The exception hierarchy of infomerge.

Every error the toolkit raises on bad input derives from :class:`InfomergeError`, so callers can
catch one type. Each subclass names one kind of problem; its message names the offending thing
(file, backbone, budget, engine) and, where there is one, the fix.
"""

from __future__ import annotations


class InfomergeError(Exception):
    """Base class of every error raised by infomerge on bad input or a bad environment.

    ``exit_code`` is the exit status the command-line tools return for it
    (:mod:`infomerge.interrupts`): 1, a runtime failure, unless the subclass is a usage error (2).
    """

    exit_code = 1


class UsageError(InfomergeError, ValueError):
    """A command line or options that cannot be run (found before any work; exit status 2)."""

    exit_code = 2


class OutputPathError(UsageError):
    """An output path (``--output``, ``--json``, ``--save-viz``, ``--work``) that cannot be written:
    a directory where a file is wanted, a file where a directory is wanted, a parent that is a file,
    a read-only or missing location, or an unknown extension. Checked before any work."""


class OutputBusyError(InfomergeError):
    """Another process is writing the same output directory (its lock is held)."""


# --- video input -----------------------------------------------------------------------------
class VideoError(InfomergeError):
    """A video could not be used. ``path`` holds the file that caused it (bad input: exit status 2)."""

    exit_code = 2

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video path does not exist (or is not a regular file)."""


class NotAVideoError(VideoError):
    """The file exists but is not a video container that the decoder recognises."""


class CorruptVideoError(VideoError):
    """The file looks like a video container but is truncated or damaged and cannot be opened."""


class NoDecodableFrameError(VideoError):
    """The container opened but not a single frame could be decoded."""


class NoVideoStreamError(NotAVideoError):
    """A media file that holds no video stream (audio only, subtitles only)."""


class StillImageError(NotAVideoError):
    """A still image (PNG, JPEG, ...) given where a video is expected; infomerge refuses it."""


class UnsupportedCodecError(VideoError):
    """A video stream whose codec the installed decoder (PyAV's FFmpeg) cannot decode; the message
    names the codec and what to install."""


class TruncatedVideoError(CorruptVideoError):
    """A container that opens but whose file ends before the frames its index lists; the message
    says how many frames are there."""


class VideoSourceError(VideoError):
    """A URL, stream or camera that cannot be opened or read; the message names the source and the
    reason reported by FFmpeg, unchanged."""


class DecodeCancelledError(VideoError):
    """Decoding stopped on request (Ctrl-C, or :meth:`DecodeJob.cancel`)."""


class FrameCountError(UsageError):
    """Sampling by fps gives another frame count than a fixed-shape graph (exported artifacts)
    takes; raised before any frame is decoded. The message names both counts and the fix."""


# --- compression -----------------------------------------------------------------------------
class BudgetError(InfomergeError, ValueError):
    """A retention ratio or token budget that cannot be met (outside (0, 1], or zero tokens)."""

    exit_code = 2


# --- models and artifacts --------------------------------------------------------------------
class UnknownBackboneError(InfomergeError, KeyError):
    """A backbone name that is not in the registry; the message lists the choices."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointNotFoundError(InfomergeError, FileNotFoundError):
    """A checkpoint that is neither in a local directory nor reachable on the hub."""


class CorruptCheckpointError(InfomergeError):
    """A checkpoint file (``*.safetensors``, config) that exists but cannot be read.

    The message names the file and how to rebuild it (delete the cached copy, download again).
    """


class ArtifactError(InfomergeError):
    """An artifact directory (graphs, engines, manifest) that is missing, stale or mismatched."""


class EngineMismatchError(ArtifactError):
    """A serialized engine built for another TensorRT version, GPU or source ONNX."""


class BackendUnavailableError(InfomergeError, ImportError):
    """A requested backend (ONNX Runtime EP, TensorRT, Triton, ...) that is not installed here.

    The message names the pip extra that installs it.
    """


class ValidationError(InfomergeError):
    """An exported graph whose outputs disagree with the source model beyond tolerance."""


class PromptTooLongError(InfomergeError, ValueError):
    """A prompt plus video tokens that does not fit in the LLM's context window."""

    exit_code = 2


class TargetError(InfomergeError, ValueError):
    """A compute capability that is malformed, or that the chosen TensorRT flavour cannot build for."""

    exit_code = 2


class UnknownMethodError(InfomergeError, KeyError):
    """A compression method name that is not in the method registry; the message lists the choices."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownBackendError(InfomergeError, KeyError):
    """A backend name that is not in a stage's backend registry; the message lists the choices."""

    exit_code = 2

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownFamilyError(InfomergeError, KeyError):
    """A backbone family name that is not in the family registry; the message lists the choices."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
