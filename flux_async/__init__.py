"""flux_async: an asyncio-first client for asynchronous image-generation APIs.

Submit many paid jobs concurrently, watch them all with one shared poll scheduler, and get the
results as they finish, with the fewest requests and never a job lost or paid for twice.
"""

from __future__ import annotations

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

__version__ = "0.1.0.dev0"

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
