"""The root's signature of the custody record (ca/custody_signature.py): made with each
key type a root may have and checked with the root certificate alone; a changed byte, a
signature by another root or of another algorithm is refused, saying which."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ca.custody import establish
from ca.custody_files import record_bytes
from ca.custody_signature import RecordSignatureRefused, check_local, sign_record, verify_record
from ca.issuance import self_signed_root
from ca.keys import KeyType
from ca.signer import SoftwareSigner

NOW = datetime.datetime.now(datetime.UTC)


def root_of(kt: KeyType) -> tuple[SoftwareSigner, x509.Certificate]:
    signer = SoftwareSigner(kt.generate())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "E-Port Joint Root CA")])
    return signer, self_signed_root(signer, name, NOW, datetime.timedelta(days=30))


def a_record() -> bytes:
    made = establish([(m, m) for m in ("customs", "tax", "forex")], 2)
    made.wipe()
    return record_bytes(made.record)


@pytest.mark.parametrize("kt", [KeyType.P256, KeyType.P384, KeyType.RSA2048, KeyType.ED25519])
def test_each_root_key_type_signs_a_record_its_certificate_verifies(kt: KeyType) -> None:
    signer, root = root_of(kt)
    record = a_record()
    sig = sign_record(signer, root, record)
    verify_record(root, record, sig)
    # one byte of the record changed: refused, named as another record
    changed = record.replace(b'"threshold": 2', b'"threshold": 3')
    assert changed != record
    with pytest.raises(RecordSignatureRefused, match="of another custody record"):
        verify_record(root, changed, sig)
    # a signature by another root of the same key type over the same bytes
    other_signer, other_root = root_of(kt)
    foreign = sign_record(other_signer, other_root, record)
    with pytest.raises(RecordSignatureRefused, match="names another root"):
        verify_record(root, record, foreign)
    # ... even when it claims to be this root's
    claimed = json.loads(foreign)
    claimed["root_sha256"] = json.loads(sig)["root_sha256"]
    with pytest.raises(RecordSignatureRefused, match="does not verify under this host's root"):
        verify_record(root, record, json.dumps(claimed).encode())


def test_malformed_or_mislabelled_signature_files_are_refused() -> None:
    signer, root = root_of(KeyType.P384)
    record = a_record()
    doc = json.loads(sign_record(signer, root, record))
    ed_signer, ed_root = root_of(KeyType.ED25519)
    ed_doc = json.loads(sign_record(ed_signer, ed_root, record))
    cases = [
        (b"not json", "not JSON"),
        (json.dumps({**doc, "format": "x"}).encode(), "not of format"),
        (json.dumps(ed_doc).encode(), "'Ed25519', but this root's key signs 'ecdsa-with-SHA384'"),
        (json.dumps({**doc, "signature": "***"}).encode(), "not base64"),
        (
            json.dumps({**doc, "signature": base64.b64encode(b"\0" * 8).decode()}).encode(),
            "does not verify",
        ),
    ]
    for data, needle in cases:
        with pytest.raises(RecordSignatureRefused, match=needle):
            verify_record(root, record, data)


def test_only_the_root_s_own_key_signs() -> None:
    _, root = root_of(KeyType.P384)
    other, _ = root_of(KeyType.P384)
    with pytest.raises(RecordSignatureRefused, match="is not the root's"):
        sign_record(other, root, a_record())


def test_a_host_s_own_record_says_whether_it_is_signed(tmp_path: Path) -> None:
    """What ``GET /ca/v1/custody`` reports as ``record_signature``: a record of before
    signed records (no signature file) is called unsigned, and still works."""
    signer, root = root_of(KeyType.P384)
    d = tmp_path / "ca"
    d.mkdir()
    (d / "root.crt").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    record = a_record()
    (d / "custody.json").write_bytes(record)
    unsigned = check_local(tmp_path)
    assert unsigned is not None and unsigned.startswith("unsigned"), unsigned
    (d / "custody.json.sig").write_bytes(sign_record(signer, root, record))
    assert check_local(tmp_path) is None
    (d / "custody.json").write_bytes(a_record())
    assert check_local(tmp_path) == (
        "its signature is of another custody record (the record was changed after it)"
    )


@pytest.mark.parametrize("kt", [KeyType.P256, KeyType.RSA2048, KeyType.ED25519])
def test_the_root_signs_active_json_with_its_order(kt: KeyType) -> None:
    """``issuers/active.json.sig`` (ca/active_signature.py) shares these checks: the root
    signs the file's bytes and a sequence, and neither can change without the signature
    failing; nor does a custody record's signature pass for one."""
    from ca.active_signature import ActiveSignatureRefused, sign_active, verify_active

    signer, root = root_of(kt)
    active = b'{"enterprise": "enterprise-2"}\n'
    sig = sign_active(signer, root, active, 4)
    assert verify_active(root, active, sig) == 4
    with pytest.raises(ActiveSignatureRefused, match=r"of another active\.json"):
        verify_active(root, b'{"enterprise": ""}\n', sig)
    for sequence in (5, 3):
        moved = json.dumps({**json.loads(sig), "sequence": sequence}).encode()
        with pytest.raises(ActiveSignatureRefused, match="does not verify under this host's"):
            verify_active(root, active, moved)
    for bad in (0, -1, "4", True, None):
        with pytest.raises(ActiveSignatureRefused, match="names no sequence"):
            verify_active(root, active, json.dumps({**json.loads(sig), "sequence": bad}).encode())
    other_signer, other_root = root_of(kt)
    with pytest.raises(ActiveSignatureRefused, match="names another root"):
        verify_active(root, active, sign_active(other_signer, other_root, active, 4))
    with pytest.raises(ActiveSignatureRefused, match="is not the root's"):
        sign_active(other_signer, root, active, 1)
    custody = json.loads(sign_record(signer, root, active))
    with pytest.raises(ActiveSignatureRefused, match="not of format"):
        verify_active(root, active, json.dumps(custody).encode())
    forged = {
        **custody,
        "format": "eport-active-signature/v1",
        "sequence": 1,
        "active_sha256": hashlib.sha256(active).hexdigest(),
    }
    with pytest.raises(ActiveSignatureRefused, match="does not verify"):
        verify_active(root, active, json.dumps(forged).encode())
