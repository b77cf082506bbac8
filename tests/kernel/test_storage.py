"""Postgres migrations, the object store and artifact signing against the real servers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from loopline_core.db import Migration, create_pool, migrate
from loopline_core.errors import LooplineError
from loopline_core.objstore import ObjectStore
from loopline_core.signing import TrustStore, generate_key, sign_dir

MIGRATIONS = [
    Migration(1, "things", "create table things (id text primary key, n int not null)"),
    Migration(2, "things_note", "alter table things add column note text"),
]


async def test_migrations_apply_once_and_are_scoped_to_the_schema(pg_dsn: str) -> None:
    schema = f"svc_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(pg_dsn, schema)
    try:
        assert await migrate(pool, schema, MIGRATIONS) == [1, 2]
        assert await migrate(pool, schema, MIGRATIONS) == [], "a second run is a no-op"
        await pool.execute("insert into things(id, n, note) values ('a', 1, 'x')")
        assert await pool.fetchval(f"select count(*) from {schema}.things") == 1
        more = [*MIGRATIONS, Migration(3, "idx", "create index things_n on things(n)")]
        assert await migrate(pool, schema, more) == [3]
        rows = await pool.fetch(f"select version from {schema}.schema_migrations order by version")
        assert [r["version"] for r in rows] == [1, 2, 3]
    finally:
        await pool.close()


async def test_a_failing_migration_leaves_nothing_half_applied(pg_dsn: str) -> None:
    schema = f"svc_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(pg_dsn, schema)
    try:
        bad = [MIGRATIONS[0], Migration(2, "broken", "alter table nope add column x int")]
        with pytest.raises(Exception, match="nope"):
            await migrate(pool, schema, bad)
        assert await pool.fetchval("select to_regclass($1)", f"{schema}.things") is None
    finally:
        await pool.close()


async def test_objects_and_directories_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    key = f"t/{uuid.uuid4().hex}/blob.bin"
    data = bytes(range(256)) * 4000
    await store.put_bytes("loopline-datasets", key, data, metadata={"digest": "abc"})
    assert await store.get_bytes("loopline-datasets", key) == data
    assert await store.exists("loopline-datasets", key)
    with pytest.raises(LooplineError, match="does not exist"):
        await store.get_bytes("loopline-datasets", key + ".missing")

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01")
    prefix = f"t/{uuid.uuid4().hex}"
    assert len(await store.put_dir("loopline-models", prefix, src)) == 2
    dest = tmp_path / "dest"
    await store.get_dir("loopline-models", prefix, dest)
    assert (dest / "a.txt").read_text() == "alpha"
    assert (dest / "sub" / "b.bin").read_bytes() == b"\x00\x01"


def _model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.bin").write_bytes(bytes(range(200)) * 50)
    (d / "config.json").write_text('{"layers": [8, 4]}')
    return d


def test_a_signed_directory_verifies_and_any_change_fails(tmp_path: Path) -> None:
    key = generate_key(tmp_path / "keys", "trainer")
    model = _model_dir(tmp_path)
    sig = tmp_path / "model.sig"
    kid = sign_dir(model, key, sig)
    trust = TrustStore([key.public_key_path])
    assert trust.key_ids == [kid]
    trust.verify(model, sig, kid)

    weights = model / "weights.bin"
    raw = bytearray(weights.read_bytes())
    raw[1234] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(LooplineError, match="verification failed"):
        trust.verify(model, sig, kid)


def test_unsigned_or_unknown_key_is_refused(tmp_path: Path) -> None:
    ours = generate_key(tmp_path / "ours", "trainer")
    theirs = generate_key(tmp_path / "theirs", "intruder")
    model = _model_dir(tmp_path)
    sig = tmp_path / "model.sig"
    trust = TrustStore([ours.public_key_path])
    with pytest.raises(LooplineError, match="unsigned"):
        trust.verify(model, sig, ours.key_id)
    kid = sign_dir(model, theirs, sig)
    with pytest.raises(LooplineError, match="unknown key"):
        trust.verify(model, sig, kid)
    # an attacker who claims our key id still fails: the bundle was not made with our key
    with pytest.raises(LooplineError, match="verification failed"):
        trust.verify(model, sig, ours.key_id)
