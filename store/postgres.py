"""The PostgreSQL store: one database, reached through the one asyncio
bridge (store/database.py), and its tables grouped into domains, each an
attribute: `store.journal.append_many(...)`, `store.merchants.find_api_key(...)`,
`store.webhooks.pending_deliveries(...)`. store/memory.py offers the same
shape for what it implements."""

from __future__ import annotations

from store import schema
from store.audit import Audit
from store.customers import Customers
from store.database import Database
from store.events import Events
from store.idempotency import IdempotencyKeys
from store.journal import Journal
from store.leases import Leases
from store.merchants import Merchants
from store.purge import Purge
from store.setup_intents import SetupIntents
from store.trace import Trace
from store.vault_keys import VaultKeys
from store.webhooks import Webhooks


class Store:
    """The domains of one database, sharing its pool of connections."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.journal = Journal(database)
        self.leases = Leases(database)
        self.merchants = Merchants(database)
        self.idempotency = IdempotencyKeys(database)
        self.events = Events(database)
        self.webhooks = Webhooks(database)
        self.audit = Audit(database)
        self.purge = Purge(database)
        self.trace = Trace(database)
        self.vault_keys = VaultKeys(database)
        self.setup_intents = SetupIntents(database)
        self.customers = Customers(database)

    @classmethod
    async def open(cls, dsn: str, *, connections_max: int = 20) -> Store:
        """Connect. Must be called inside `trio_asyncio.open_loop()`; raises
        StoreUnavailable when the database cannot be reached."""
        return cls(await Database.open(dsn, connections_max=connections_max))

    async def close(self) -> None:
        await self.database.close()

    async def migrate(self, partitions: int) -> int:
        """Create the schema; fix the partition count on first use.

        Returns the partition count the database was created with, which wins
        over `partitions` (ids already issued encode it). Raises
        SchemaMismatch when the database was made by another schema version.
        """
        settings = await self.database.call(schema.migrate, partitions, transaction=True)
        return schema.partition_count(settings)
