"""flux_async: an asyncio-first client for asynchronous image-generation APIs.

Submit many paid jobs concurrently, watch them all with one shared poll scheduler, and get the
results as they finish, with the fewest requests and never a job lost or paid for twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import ModelSpend
from .catalog import PRICES, PROVIDERS, CostEstimate, ModelEstimate, estimate_cost, validate
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ConfigurationError,
    CoordinatorError,
    DownloadError,
    FluxError,
    InsufficientCreditsError,
    LedgerError,
    ModerationError,
    NotFoundError,
    OutageError,
    ProtocolError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    SubmissionUncertainError,
    TaskError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeoutError,
    TransportError,
    TransportTimeout,
    ValidationError,
    WebhookVerificationError,
)
from .ledger import FileLedger, Ledger, LedgerEntry, MemoryLedger, SettledSpend
from .models import (
    Cost,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    Outcome,
    TaskFailure,
    TaskRef,
    TaskState,
    TaskStatus,
)
from .retry import RetryPolicy
from .scheduler import PollPolicy, SchedulerStatistics
from .session import Job, Limits, Session, SessionStatistics

if TYPE_CHECKING:
    from .fleet import RedisCoordinator as RedisCoordinator
    from .fleet import RedisLedger as RedisLedger

__version__ = "0.1.0.dev0"

#: Names of the optional ``redis`` extra, imported on first use (``import flux_async`` never
#: imports redis). Not in ``__all__``: ``from flux_async import *`` works without the extra.
_FLEET = ("RedisCoordinator", "RedisLedger")


def __getattr__(name: str) -> Any:
    if name in _FLEET:
        from . import fleet

        return getattr(fleet, name)
    raise AttributeError(f"module 'flux_async' has no attribute {name!r}")

__all__ = [
    "PRICES",
    "PROVIDERS",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ConfigurationError",
    "CoordinatorError",
    "Cost",
    "CostEstimate",
    "DownloadError",
    "FileLedger",
    "FluxError",
    "GeneratedImage",
    "GenerationRequest",
    "GenerationResult",
    "InsufficientCreditsError",
    "Job",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "Limits",
    "MemoryLedger",
    "ModelEstimate",
    "ModelSpend",
    "ModerationError",
    "NotFoundError",
    "OutageError",
    "Outcome",
    "PollPolicy",
    "ProtocolError",
    "RateLimitError",
    "ResultExpiredError",
    "RetryPolicy",
    "SchedulerStatistics",
    "ServerError",
    "Session",
    "SessionStatistics",
    "SettledSpend",
    "SubmissionUncertainError",
    "TaskError",
    "TaskFailedError",
    "TaskFailure",
    "TaskNotFoundError",
    "TaskRef",
    "TaskState",
    "TaskStatus",
    "TaskTimeoutError",
    "TransportError",
    "TransportTimeout",
    "ValidationError",
    "WebhookVerificationError",
    "__version__",
    "estimate_cost",
    "validate",
]
