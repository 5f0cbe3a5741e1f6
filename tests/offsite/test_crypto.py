"""age encryption without a store: recipients, identities, and streams Debian's `age` reads."""

from __future__ import annotations

import io
import secrets
import subprocess
from pathlib import Path

import pytest
from pyrage import x25519

from backups.offsite import crypto
from backups.offsite.errors import Cancelled, IdentityError, RecipientError
from backups.offsite.store import StoreSettings, mask_url, validate_settings
from backups.offsite.upload import upload_backup


def test_bad_recipients_are_named_by_position_and_never_echoed() -> None:
    private = str(x25519.Identity.generate())
    good = str(x25519.Identity.generate().to_public())
    problems = crypto.recipient_problems([good, "age1notakey", private, "ssh-rsa AAAA", 7])
    assert len(problems) == 4
    assert problems[0].startswith("encryptionRecipients[1] is not a valid age public key")
    assert "encryptionRecipients[2] is a private key" in problems[1]
    assert problems[2].startswith("encryptionRecipients[3] is not an age public key")
    assert problems[3] == "encryptionRecipients[4] must be a string"
    joined = " ".join(problems)
    assert private not in joined and private[20:40] not in joined and "age1notakey" not in joined
    assert crypto.recipient_problems([good, f"  {good}  "]) == []


def test_upload_with_a_bad_recipient_fails_before_any_request(tmp_path: Path) -> None:
    unreachable = StoreSettings(endpoint="http://127.0.0.1:9", bucket="never-contacted")
    with pytest.raises(RecipientError, match=r"encryptionRecipients\[0\]"):
        upload_backup(
            unreachable,
            "backup-1",
            [],
            lambda rel: io.BytesIO(),
            metadata={},
            state_dir=tmp_path,
            recipients=["age1nope"],
        )


def test_identity_file_errors_say_the_line_not_the_key(tmp_path: Path) -> None:
    key = str(x25519.Identity.generate())
    broken = key[:-6] + ("q" if key[-6] != "q" else "p") + key[-5:]
    path = tmp_path / "key.txt"
    path.write_text(f"# a comment\n\n{broken}\n")
    with pytest.raises(IdentityError) as caught:
        crypto.load_identities(path)
    assert "line 3" in str(caught.value)
    assert broken[15:] not in str(caught.value)
    path.write_text(f"# a comment\n{key}\n")
    assert str(crypto.load_identities(path)[0]) == key
    with pytest.raises(IdentityError, match="cannot read"):
        crypto.load_identities(tmp_path / "missing.txt")


def test_streamed_encryption_decrypts_with_debian_age(tmp_path: Path) -> None:
    identity = x25519.Identity.generate()
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{identity}\n")
    plain = secrets.token_bytes(3 * 65536 + 123)  # several age chunks and a partial one
    with open(tmp_path / "file.age", "wb") as target:
        crypto.encrypt_stream(io.BytesIO(plain), target, crypto.parse_recipients([str(identity.to_public())]))
    done = subprocess.run(
        ["age", "-d", "-i", str(key_file), str(tmp_path / "file.age")], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == plain


def test_an_exception_from_the_reader_comes_out_as_itself() -> None:
    class Stopping(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise Cancelled("stop here")

    recipients = crypto.parse_recipients([str(x25519.Identity.generate().to_public())])
    with pytest.raises(Cancelled, match="stop here"):
        crypto.encrypt_stream(Stopping(), io.BytesIO(), recipients)


def test_decryption_with_another_key_or_of_a_truncated_stream_is_an_identity_error() -> None:
    identity = x25519.Identity.generate()
    sealed = crypto.encrypt_bytes(b"x" * 100_000, [identity.to_public()])
    with pytest.raises(IdentityError, match="no given identity"):
        crypto.decrypt_bytes(sealed, [x25519.Identity.generate()])
    with pytest.raises(IdentityError, match="damaged or truncated"):
        crypto.decrypt_bytes(sealed[:-10], [identity])
    assert crypto.decrypt_bytes(sealed, [identity]) == b"x" * 100_000


def test_settings_never_show_credentials() -> None:
    settings = StoreSettings(
        endpoint="https://user:pw-in-url@s3.example.com",
        bucket="b",
        access_key_id="AKIAEXAMPLEKEY",
        secret_access_key="very-secret-value",
    )
    shown = repr(settings)
    assert "AKIAEXAMPLEKEY" not in shown and "very-secret-value" not in shown
    masked = settings.mask(
        "key AKIAEXAMPLEKEY secret very-secret-value at https://user:pw-in-url@s3.example.com"
    )
    assert masked == "key **** secret **** at https://user:****@s3.example.com"
    assert mask_url("https://s3.example.com/x") == "https://s3.example.com/x"


def test_settings_come_from_the_config_section_and_the_environment() -> None:
    offsite = {
        "enabled": True,
        "endpoint": "https://s3.example.com",
        "bucket": "my-backups",
        "prefix": "/host-1/",
        "region": "eu-central",
        "storageClass": "STANDARD_IA",
    }
    environ = {"OFFSITE_ACCESS_KEY_ID": "AKIAFROMENV", "OFFSITE_SECRET_ACCESS_KEY": "from-env"}
    settings = StoreSettings.from_config(offsite, environ)
    assert (settings.bucket, settings.root, settings.region, settings.storage_class) == (
        "my-backups",
        "host-1/",
        "eu-central",
        "STANDARD_IA",
    )
    assert (settings.access_key_id, settings.secret_access_key) == ("AKIAFROMENV", "from-env")
    assert settings.key("objects/x") == "host-1/objects/x"
    assert validate_settings(settings) == []
    empty = StoreSettings.from_config({"bucket": "A_B", "endpoint": "ftp://x"}, {})
    assert validate_settings(empty) == [
        "offsite.bucket is not a valid bucket name (3-63 of a-z 0-9 . -)",
        "offsite.endpoint must be an http(s) URL",
        "the credentials are not set (OFFSITE_ACCESS_KEY_ID, OFFSITE_SECRET_ACCESS_KEY)",
    ]
