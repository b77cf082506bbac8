"""The raw archive writer: a batch of ingested events -> Parquet files and manifests in ``loopline-raw``.

The bytes are built by ``loopline_core.archive`` (pure, shared with ``loopline replay``); this adapter
only puts them. Each file goes before its manifest, so a manifest never names a file that is not
there; a crash between the two leaves a file without a manifest, which the redelivered batch
overwrites (same name) and which the reader ignores until then.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from loopline_core.archive import BUCKET, ArchivedRecord, ArchiveFile, build_files
from loopline_core.objstore import ObjectStore


class ArchiveWriter:
    """Writes archive files to the object store (``root`` is a key prefix inside the bucket)."""

    def __init__(self, objects: ObjectStore, root: str = "", writer: str = "ingest", bucket: str = BUCKET) -> None:
        self.objects = objects
        self.root = root.strip("/") + "/" if root.strip("/") else ""
        self.writer = writer
        self.bucket = bucket

    def build(self, records: Sequence[ArchivedRecord]) -> list[ArchiveFile]:
        return build_files(records, self.root, self.writer)

    async def write(self, records: Sequence[ArchivedRecord]) -> list[ArchiveFile]:
        """Write one file and manifest per (dataset, event-time hour) of ``records``; return them.

        Files are put concurrently, each Parquet before its manifest. Any failure raises (a transient
        one, for the bus: the batch is not committed and comes again, and rewrites the same names).
        """
        files = await asyncio.to_thread(self.build, records)  # Parquet encoding off the loop ingest serves on

        async def put(f: ArchiveFile) -> None:
            await self.objects.put_bytes(self.bucket, f.key, f.data, metadata={"sha256": f.manifest["sha256"]})
            await self.objects.put_bytes(self.bucket, f.manifest_key, json.dumps(f.manifest, indent=2).encode(),
                                         content_type="application/json")

        await asyncio.gather(*(put(f) for f in files))
        return files
