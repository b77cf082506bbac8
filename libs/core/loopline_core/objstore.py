"""The S3 object store (SeaweedFS locally, MinIO or S3 in production) through the ``minio`` client."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from urllib.parse import urlparse

from minio import Minio
from minio.error import S3Error

from loopline_core.errors import ErrorKind, LooplineError

BUCKETS = ("loopline-raw", "loopline-datasets", "loopline-models", "loopline-reports")


class ObjectStore:
    """Async facade over the blocking ``minio`` client (calls run in worker threads)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, *, region: str = "us-east-1") -> None:
        url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        self._client = Minio(url.netloc, access_key=access_key, secret_key=secret_key,
                             secure=url.scheme == "https", region=region)

    @property
    def client(self) -> Minio:
        return self._client

    async def ensure_bucket(self, bucket: str) -> None:
        if not await asyncio.to_thread(self._client.bucket_exists, bucket):
            try:
                await asyncio.to_thread(self._client.make_bucket, bucket)
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    async def list_buckets(self) -> list[str]:
        return [b.name for b in await asyncio.to_thread(self._client.list_buckets)]

    async def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream",
                        metadata: dict[str, str] | None = None) -> None:
        await asyncio.to_thread(self._client.put_object, bucket, key, io.BytesIO(data), len(data),
                                content_type=content_type, metadata=metadata)  # type: ignore[arg-type]

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        def _get() -> bytes:
            try:
                resp = self._client.get_object(bucket, key)
            except S3Error as exc:
                if exc.code in {"NoSuchKey", "NoSuchBucket"}:
                    raise LooplineError(ErrorKind.NOT_FOUND, f"s3://{bucket}/{key} does not exist") from exc
                raise
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return await asyncio.to_thread(_get)

    async def exists(self, bucket: str, key: str) -> bool:
        try:
            await asyncio.to_thread(self._client.stat_object, bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchBucket", "NotFound"}:
                return False
            raise
        return True

    async def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        objs = await asyncio.to_thread(lambda: list(self._client.list_objects(bucket, prefix=prefix, recursive=True)))
        return [o.object_name for o in objs if o.object_name]

    async def put_dir(self, bucket: str, prefix: str, directory: Path) -> list[str]:
        """Upload every file under ``directory`` to ``prefix/<relative path>``; return the keys."""
        keys = []
        files = await asyncio.to_thread(lambda: sorted(p for p in directory.rglob("*") if p.is_file()))
        for path in files:
            key = f"{prefix.rstrip('/')}/{path.relative_to(directory).as_posix()}"
            await asyncio.to_thread(self._client.fput_object, bucket, key, str(path))
            keys.append(key)
        return keys

    async def get_dir(self, bucket: str, prefix: str, directory: Path) -> list[Path]:
        """Download every object under ``prefix/`` into ``directory``, keeping relative paths."""
        base = prefix.rstrip("/") + "/"
        out = []
        for key in await self.list_keys(bucket, base):
            rel = key[len(base):]
            if not rel or ".." in Path(rel).parts:
                continue
            dest = directory / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self._client.fget_object, bucket, key, str(dest))
            out.append(dest)
        if not out:
            raise LooplineError(ErrorKind.NOT_FOUND, f"nothing under s3://{bucket}/{base}")
        return out
