"""Signing keys that rotate and get revoked, the refusals they cause, and the alert a refusal raises.

Real model_signing bundles over real files; the refusal alert goes through the real broker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loopline.monitor.v1.events_pb2 import ArtifactRefused
from loopline_core.errors import ErrorKind, LooplineError
from loopline_core.events import derived_id
from loopline_core.kafka import Publisher, TopicNamer
from loopline_core.kafka.records import CONTENT_TYPE, MESSAGE_TYPE
from loopline_core.objstore import ObjectStore
from loopline_core.refusals import REFUSALS, report_refusal
from loopline_core.signing import (
    SigningKey,
    TrustStore,
    current_key_id,
    generate_key,
    init_keys,
    revoke,
    rotate,
    sign_dir,
)
from loopline_ml.artifact import save
from loopline_ml.profile import build_profile
from loopline_ml.store import MODELS, fetch_verified, upload_signed
from loopline_stack.stack import StackState
from loopline_testing.builders import FEATURES, make_model, read_topic


def _model(directory: Path, seed: int = 0) -> Path:
    directory.mkdir(parents=True)
    (directory / "weights.bin").write_bytes(bytes(range(256)) * (40 + seed))
    (directory / "config.json").write_text(f'{{"seed": {seed}}}')
    return directory


def _refusal(trust: TrustStore, model: Path, sig: Path, kid: str) -> LooplineError:
    with pytest.raises(LooplineError) as info:
        trust.verify(model, sig, kid)
    assert info.value.kind is ErrorKind.FAILED_PRECONDITION
    return info.value


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "private", tmp_path / "trusted"


def test_rotation_keeps_old_signatures_valid_and_revocation_refuses_them(tmp_path: Path,
                                                                        keys: tuple[Path, Path]) -> None:
    private, trusted = keys
    signer = init_keys(private, trusted)  # the trainer's key, built once: it follows the pointer
    trust = TrustStore.from_dir(trusted)  # a reader's store, built once
    model_a, sig_a = _model(tmp_path / "a"), tmp_path / "a.sig"
    key_a = sign_dir(model_a, signer, sig_a)
    assert key_a == current_key_id(private)

    key_b = rotate(private, trusted)
    assert key_b != key_a and current_key_id(private) == key_b
    model_b, sig_b = _model(tmp_path / "b", seed=1), tmp_path / "b.sig"
    assert sign_dir(model_b, signer, sig_b) == key_b, "the same SigningKey signs with the rotated key"
    trust.verify(model_a, sig_a, key_a)
    trust.verify(model_b, sig_b, key_b)
    assert trust.key_ids == sorted([key_a, key_b])

    revoke(trusted, key_a, "rotated out")
    assert (trusted / f"{key_a}.pub").is_file(), "the revoked key's .pub is still there"
    refused = _refusal(trust, model_a, sig_a, key_a)
    assert refused.details == {"refusal": "revoked_key", "signer_key_id": key_a}
    # the bundle names its key: claiming the new key id for A's artifact does not get it through
    assert _refusal(trust, model_a, sig_a, key_b).details == {"refusal": "revoked_key", "signer_key_id": key_a}
    trust.verify(model_b, sig_b, key_b)
    assert trust.key_ids == [key_b] and trust.revoked == {key_a}


def test_unknown_key_tampered_and_unsigned_are_told_apart(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    private, trusted = keys
    ours = init_keys(private, trusted)
    stranger = generate_key(tmp_path / "elsewhere", "stranger")
    trust = TrustStore.from_dir(trusted)
    model, sig = _model(tmp_path / "m"), tmp_path / "m.sig"

    assert _refusal(trust, model, sig, ours.key_id).details == {"refusal": "unsigned",
                                                                "signer_key_id": ours.key_id}
    theirs = sign_dir(model, stranger, sig)
    assert _refusal(trust, model, sig, theirs).details == {"refusal": "unknown_key", "signer_key_id": theirs}

    kid = sign_dir(model, ours, sig)
    trust.verify(model, sig, kid)
    weights = model / "weights.bin"
    raw = bytearray(weights.read_bytes())
    raw[1000] ^= 0x01
    weights.write_bytes(bytes(raw))
    assert _refusal(trust, model, sig, kid).details == {"refusal": "tampered", "signer_key_id": kid}
    raw[1000] ^= 0x01
    weights.write_bytes(bytes(raw))
    trust.verify(model, sig, kid)
    (model / "extra.bin").write_bytes(b"slipped in")
    assert _refusal(trust, model, sig, kid).details["refusal"] == "tampered"


def test_the_trust_store_follows_its_directory_without_being_rebuilt(tmp_path: Path,
                                                                      keys: tuple[Path, Path]) -> None:
    private, trusted = keys
    init_keys(private, trusted)
    trust = TrustStore.from_dir(trusted)
    partner = generate_key(tmp_path / "partner", "partner")
    model, sig = _model(tmp_path / "m"), tmp_path / "m.sig"
    kid = sign_dir(model, partner, sig)
    assert _refusal(trust, model, sig, kid).details["refusal"] == "unknown_key"

    (trusted / "partner.pub").write_bytes(partner.public_key_path.read_bytes())  # any name works
    trust.verify(model, sig, kid)
    (trusted / "revoked").write_text(f"# keys we no longer accept\n{kid}  # partner left\n")
    assert _refusal(trust, model, sig, kid).details["refusal"] == "revoked_key"
    (trusted / "revoked").write_text("")
    trust.verify(model, sig, kid)
    (trusted / "partner.pub").unlink()
    assert _refusal(trust, model, sig, kid).details["refusal"] == "unknown_key"


def test_existing_callers_keep_working(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    # a fixed key file, as the tests and older deployments use it
    fixed = generate_key(tmp_path / "fixed", "trainer")
    assert fixed.private_key_path == tmp_path / "fixed" / "trainer.key"
    model, sig = _model(tmp_path / "m"), tmp_path / "m.sig"
    assert sign_dir(model, fixed, sig) == fixed.key_id
    TrustStore([fixed.public_key_path]).verify(model, sig, fixed.key_id)

    # the trainer's composition: SigningKey(path, path.with_suffix(".pub")) where path is the pointer
    private, trusted = keys
    init_keys(private, trusted)
    pointer = private / "current"
    via_pointer = SigningKey(pointer, pointer.with_suffix(".pub"))
    first = via_pointer.key_id
    second = rotate(private, trusted)
    assert via_pointer.key_id == second != first
    assert via_pointer.private_key_path == private / f"{second}.key"

    # a symlink as the pointer works too
    link = private / "link"
    link.symlink_to(private / f"{first}.key")
    assert SigningKey(link, link.with_suffix(".pub")).key_id == first


def test_a_pointer_mounted_from_a_kubernetes_secret(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    # the kubelet's layout: every key a symlink into ..data, itself a symlink to a timestamped directory,
    # so `current` links to the pointer file, which names the key beside it
    private, trusted = keys
    key = init_keys(private, trusted)
    mount, data = tmp_path / "secret", tmp_path / "secret" / "..2026_12_04_22_00_00.1"
    data.mkdir(parents=True)
    for f in private.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
        (mount / f.name).symlink_to(Path("..data") / f.name)
    (mount / "..data").symlink_to(data.name)
    mounted = SigningKey(mount / "current", (mount / "current").with_suffix(".pub"))
    assert mounted.key_id == key.key_id
    model, sig = _model(tmp_path / "m"), tmp_path / "m.sig"
    assert sign_dir(model, mounted, sig) == key.key_id
    TrustStore.from_dir(trusted).verify(model, sig, key.key_id)


def test_revoking_checks_the_id(keys: tuple[Path, Path]) -> None:
    _, trusted = keys
    with pytest.raises(LooplineError) as info:
        revoke(trusted, "not-a-key")
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert revoke(trusted, "0123456789abcdef") is True
    assert revoke(trusted, "0123456789abcdef") is False, "revoking twice adds one line"
    assert (trusted / "revoked").read_text().count("0123456789abcdef") == 1


async def test_fetch_verified_carries_the_refusal(tmp_path: Path, store: ObjectStore,
                                                  keys: tuple[Path, Path]) -> None:
    private, trusted = keys
    signer = init_keys(private, trusted)
    trust = TrustStore.from_dir(trusted)
    model_dir = tmp_path / "work" / "model"
    import numpy as np  # noqa: PLC0415

    ref = build_profile(np.random.default_rng(0).normal(size=(50, len(FEATURES))), FEATURES,
                        dict.fromkeys(FEATURES, "num"), None)
    save(model_dir, make_model(0), ref)
    prefix = f"test-signing/{tmp_path.name}"
    artifact, signature, kid = await upload_signed(store, signer, model_dir, prefix)
    loaded = await fetch_verified(store, trust, artifact, signature, kid, into=tmp_path / "ok")
    assert loaded.config.feature_names == FEATURES

    revoke(trusted, kid)
    with pytest.raises(LooplineError) as info:
        await fetch_verified(store, trust, artifact, signature, kid, into=tmp_path / "revoked")
    assert info.value.details == {"refusal": "revoked_key", "signer_key_id": kid}

    with pytest.raises(LooplineError) as info:
        await fetch_verified(store, trust, artifact, f"s3://{MODELS}/{prefix}/no-such.sig", kid,
                             into=tmp_path / "unsigned")
    assert info.value.details["refusal"] == "unsigned"
    with pytest.raises(LooplineError) as info:
        await fetch_verified(store, trust, artifact, "", kid, into=tmp_path / "no-uri")
    assert info.value.details["refusal"] == "unsigned"


def test_the_stack_signs_through_a_pointer_its_readers_trust(stack: StackState, tmp_path: Path) -> None:
    pointer = Path(stack.env["LOOPLINE_SIGNING_KEY"])
    assert pointer.name == "current"
    key = SigningKey(pointer, pointer.with_suffix(".pub"))  # as the trainer and the test builders do
    model, sig = _model(tmp_path / "m"), tmp_path / "m.sig"
    kid = sign_dir(model, key, sig)
    trust = TrustStore.from_dir(Path(stack.env["LOOPLINE_TRUSTED_KEYS_DIR"]))
    assert kid in trust.key_ids
    trust.verify(model, sig, kid)


async def test_report_refusal_publishes_one_decodable_alert(publisher: Publisher, namer: TopicNamer,
                                                            bootstrap: str) -> None:
    error = LooplineError(ErrorKind.FAILED_PRECONDITION, "signed by revoked key 'ab12ab12ab12ab12'",
                          {"refusal": "revoked_key", "signer_key_id": "ab12ab12ab12ab12"})
    before = REFUSALS.labels("inference", "revoked_key")._value.get()
    for _ in range(2):  # the same refusal again (a restart, a redelivery): same event id
        await report_refusal(publisher, namer, service="inference", model="fraud", version=3,
                             artifact_uri="s3://loopline-models/fraud/r1/model", signer_key_id="ab12ab12ab12ab12",
                             error=error)
    records = await read_topic(bootstrap, namer.alerts(), 2)
    assert len(records) == 2
    events = [ArtifactRefused.FromString(r.value) for r in records]
    first = events[0]
    assert (first.model_name, first.model_version, first.service, first.kind, first.signer_key_id) == (
        "fraud", 3, "inference", "revoked_key", "ab12ab12ab12ab12")
    assert first.artifact_uri == "s3://loopline-models/fraud/r1/model"
    assert "revoked" in first.reason and first.metadata.producer == "inference"
    assert first.metadata.event_id == derived_id("artifact-refused", "inference", "fraud", "3", "revoked_key")
    assert {e.metadata.event_id for e in events} == {first.metadata.event_id}
    for r in records:
        assert r.key == b"fraud"
        assert r.header(MESSAGE_TYPE) == "loopline.monitor.v1.ArtifactRefused"
        assert r.header(CONTENT_TYPE) == "application/x-protobuf"
    assert REFUSALS.labels("inference", "revoked_key")._value.get() == before + 2

    # another service refusing the same artifact is another event
    await report_refusal(publisher, namer, service="monitor", model="fraud", version=3, artifact_uri="",
                         signer_key_id="", error=error)
    third = ArtifactRefused.FromString((await read_topic(bootstrap, namer.alerts(), 3))[-1].value)
    assert third.service == "monitor" and third.signer_key_id == "ab12ab12ab12ab12"
    assert third.metadata.event_id != first.metadata.event_id
