"""Import mongoexport dumps (Payload CMS on MongoDB) into the tenant tables.

    mongoexport files -> reader (stream, positions) -> bson.json_util (Extended JSON)
      -> convert (mapping, ids, per-document checks) -> COPY into staging
      -> set-based checks (tenant, references, unique keys) -> move (one transaction per
         collection, upsert on the tenant-scoped key) -> verify (counts, checksums, refs)

`platform-db import-mongo DIR` is the command; docs/MIGRATION.md is the guide.
"""

from platform_db.importer.convert import DateWindow
from platform_db.importer.load import Mode
from platform_db.importer.mapping import ImportMapping, MappingError, default_mapping, load_mapping
from platform_db.importer.report import ImportReport
from platform_db.importer.run import ImportOptions, ImportSetupError, run_import

__all__ = [
    "DateWindow",
    "ImportMapping",
    "ImportOptions",
    "ImportReport",
    "ImportSetupError",
    "MappingError",
    "Mode",
    "default_mapping",
    "load_mapping",
    "run_import",
]
