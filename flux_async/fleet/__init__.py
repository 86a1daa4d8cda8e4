"""Many processes and machines sharing one account through Redis: the coordinator (caps,
budget, idempotency claims, task ownership and orphans) and the shared ledger.

It needs the optional ``redis`` extra (``pip install "flux-async[redis]"``): importing this
package without it raises ImportError saying so; ``import flux_async`` never imports it
(``flux_async.RedisCoordinator`` and ``flux_async.RedisLedger`` are looked up on first use).
It must not import the session.
"""

from ._batch import SharedBatch, SharedProgress
from ._coordinator import CoordinatorStatistics, RedisCoordinator
from ._ledger import RedisLedger, RedisLedgerStatistics

__all__ = ["CoordinatorStatistics", "RedisCoordinator", "RedisLedger", "RedisLedgerStatistics", "SharedBatch", "SharedProgress"]
