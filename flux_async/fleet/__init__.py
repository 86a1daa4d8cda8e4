"""Many processes and machines sharing one account through Redis: the coordinator (caps,
budget, idempotency claims, task ownership). Importing this package does not import ``redis``
(the optional ``redis`` extra); building a coordinator does. It must not import the session.
"""

from ._coordinator import CoordinatorStatistics, RedisCoordinator

__all__ = ["CoordinatorStatistics", "RedisCoordinator"]
