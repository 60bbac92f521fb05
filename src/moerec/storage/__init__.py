"""Storage: SQLAlchemy tables, the async ``Storage`` repository, migrations and importer.

``Storage`` is the only object the service needs; the schema comes from the Alembic scripts
shipped in ``moerec/storage/migrations`` (``migrate.upgrade`` or ``await Storage.upgrade()``).
"""

from moerec.storage.database import (
    ArmEvents,
    AuditEntry,
    ItemRecord,
    NewEvent,
    Storage,
    StoredEvent,
    UserHistory,
)
from moerec.storage.errors import (
    IdempotencyConflict,
    InvalidRecordError,
    StorageError,
    StorageUnavailableError,
)
from moerec.storage.importer import ImportReport, import_dataset
from moerec.storage.migrate import current_revision, head_revision, upgrade

__all__ = [
    "ArmEvents",
    "AuditEntry",
    "IdempotencyConflict",
    "ImportReport",
    "InvalidRecordError",
    "ItemRecord",
    "NewEvent",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "StoredEvent",
    "UserHistory",
    "current_revision",
    "head_revision",
    "import_dataset",
    "upgrade",
]
