"""The library names the command line uses, gathered in one place.

The command is built on the public API only: everything comes from the package root.
"""

from __future__ import annotations

from .. import (
    PROVIDERS,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    FluxError,
    GeneratedImage,
    GenerationRequest,
    InsufficientCreditsError,
    Limits,
    ModerationError,
    Outcome,
    Session,
    SessionStatistics,
    SubmissionUncertainError,
    TaskError,
    TaskFailedError,
    TaskNotFoundError,
    TaskRef,
    TaskState,
    TaskStatus,
    TaskTimeoutError,
    ValidationError,
    __version__,
    catalog,
)

__all__ = [
    "PROVIDERS",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "FluxError",
    "GeneratedImage",
    "GenerationRequest",
    "InsufficientCreditsError",
    "Limits",
    "ModerationError",
    "Outcome",
    "Session",
    "SessionStatistics",
    "SubmissionUncertainError",
    "TaskError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskRef",
    "TaskState",
    "TaskStatus",
    "TaskTimeoutError",
    "ValidationError",
    "__version__",
    "catalog",
]
