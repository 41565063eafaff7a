"""Content credentials of renders: real renders signed with real chains, read back with c2pa, then
re-encoded, damaged and truncated to see what a reader says of them."""

from __future__ import annotations

import datetime
import logging
import shutil
import stat
import subprocess
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from avatar.config import SAMPLE_RATE_HZ, AppConfig, with_overrides
from avatar.disclosure.credentials import (
    TRAINED_ALGORITHMIC_MEDIA,
    default_credentials_dir,
    local_root_path,
    read_credentials,
    sign_video,
    signing_material,
)
from avatar.errors import CredentialsError
from avatar.render import RenderResult, render_file

SMALL = {"width_px": 128, "height_px": 128}


@pytest.fixture(scope="module")
def small_config() -> AppConfig:
    return with_overrides(AppConfig(), video=SMALL)


@pytest.fixture(scope="module")
def voice_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One second of a voiced, syllable-like tone (16 kHz mono 16-bit), made with numpy."""
    t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    signal = envelope * (np.sin(2 * np.pi * 140 * t) + 0.5 * np.sin(2 * np.pi * 280 * t))
    path = tmp_path_factory.mktemp("voice") / "voice.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes((signal / 1.5 * 20000).astype("<i2").tobytes())
    return path


@dataclass
class Signed:
    result: RenderResult
    out: Path
    credentials_dir: Path


@pytest.fixture(scope="module")
def signed(small_config: AppConfig, voice_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Signed:
    """One render signed with the local chain, made in a fresh credentials directory."""
    base = tmp_path_factory.mktemp("signed")
    out = base / "out" / "clip.mp4"
    result = render_file(
        small_config, audio_path=voice_wav, out_path=out, progress=False, credentials_dir=base / "credentials"
    )
    return Signed(result, out, base / "credentials")


def make_chain(directory: Path, organisation: str) -> tuple[Path, Path, Path]:
    """An operator's root and signing certificate (ES256, with the C2PA profile), as PEM files:
    (chain: signer then root, signer key, root)."""
    now = datetime.datetime.now(datetime.UTC)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                           x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} root")])
    usage = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only",
         "decipher_only"),
        False,
    )
    root = (
        x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name).public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                                 x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} signer")]))
        .issuer_name(root_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    chain, key_path, root_path = directory / "chain.pem", directory / "signer.key", directory / "root.pem"
    chain.write_bytes(leaf.public_bytes(pem) + root.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    root_path.write_bytes(root.public_bytes(pem))
    return chain, key_path, root_path


def operator_config(config: AppConfig, chain: Path, key: Path) -> AppConfig:
    return with_overrides(config, disclosure={"signing_certificate": str(chain), "signing_key": str(key)})


def test_render_is_signed_valid_and_says_what_made_it(signed: Signed) -> None:
    creds = read_credentials(signed.out)
    assert signed.result.content_credentials == creds
    assert creds["present"] and creds["valid"], creds
    assert creds["errors"] == []
    assert creds["generator"] is not None and creds["generator"].startswith("talking-portrait ")
    assert creds["source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert creds["source_type"] == "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    assert creds["signer"] == "talking-portrait local signer"
    assert "voice.wav" in creds["ingredients"] and len(creds["ingredients"]) == 2
    watermark = creds["watermark"]
    assert watermark is not None and set(watermark) == {"service_id", "session"}
    assert watermark["service_id"] == AppConfig().disclosure.service_id
    assert isinstance(watermark["session"], int) and 0 <= watermark["session"] < 2**32
    # The output still plays: H264 + AAC, every frame there.
    with av.open(str(signed.out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in container.decode(video=0)) == signed.result.frames
    # Nothing but the output is left beside it (the unsigned video and the signing file are gone).
    assert sorted(p.name for p in signed.out.parent.iterdir()) == ["clip.mp4"]


def test_local_chain_is_valid_but_not_trusted_unless_its_root_is_given(signed: Signed) -> None:
    creds = read_credentials(signed.out)
    assert creds["valid"] and not creds["trusted"]
    assert "trust anchor" in creds["trust"]
    anchored = read_credentials(signed.out, trust_anchors=local_root_path(signed.credentials_dir))
    assert anchored["valid"] and anchored["trusted"], anchored


def test_local_chain_is_made_once_private_and_reused(
    signed: Signed, small_config: AppConfig, voice_wav: Path, tmp_path: Path
) -> None:
    chain_dir = local_root_path(signed.credentials_dir).parent
    before = {p.name: p.read_bytes() for p in chain_dir.iterdir()}
    assert set(before) == {"chain.pem", "signer.key", "root.pem"}
    assert stat.S_IMODE((chain_dir / "signer.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(chain_dir.stat().st_mode) == 0o700
    signer, root = x509.load_pem_x509_certificates(before["chain.pem"])
    assert signer.issuer == root.subject
    assert signer.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    usages = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in usages
    assert not signer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    again = render_file(
        small_config, audio_path=voice_wav, out_path=tmp_path / "again.mp4", progress=False,
        credentials_dir=signed.credentials_dir,
    )
    assert {p.name: p.read_bytes() for p in chain_dir.iterdir()} == before
    assert sorted(p.name for p in signed.credentials_dir.iterdir()) == ["local-chain"]
    creds = again.content_credentials
    assert creds is not None and creds["valid"]
    assert creds["signer_serial"] == read_credentials(signed.out)["signer_serial"]
    assert creds["watermark"]["session"] != read_credentials(signed.out)["watermark"]["session"]


_RACE = """
import sys, time
from pathlib import Path
from avatar.config import DisclosureConfig
from avatar.disclosure.credentials import signing_material
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
sys.stdout.buffer.write(signing_material(DisclosureConfig(), Path(sys.argv[1])).chain_pem)
"""


def test_concurrent_first_use_makes_one_chain(tmp_path: Path) -> None:
    """Processes that all start on an empty directory at the same instant end up with one chain."""
    credentials_dir = tmp_path / "credentials"
    start_at = str(time.time() + 3.0)  # after every process has imported the module
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACE, str(credentials_dir), start_at], stdout=subprocess.PIPE)
        for _ in range(6)
    ]
    chains = [proc.communicate(timeout=60)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(chains)) == 1 and chains[0].startswith(b"-----BEGIN CERTIFICATE-----")
    assert (local_root_path(credentials_dir).parent / "chain.pem").read_bytes() == chains[0]
    assert sorted(p.name for p in credentials_dir.iterdir()) == ["local-chain"]  # no staging left behind


def test_reencoded_copy_has_no_manifest(signed: Signed, tmp_path: Path) -> None:
    copy = tmp_path / "reencoded.mp4"
    with av.open(str(signed.out)) as source, av.open(str(copy), mode="w") as dest:
        video = dest.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = SMALL["width_px"], SMALL["height_px"], "yuv420p"
        for frame in source.decode(video=0):
            frame.pts = None
            dest.mux(video.encode(frame))
        dest.mux(video.encode(None))
    creds = read_credentials(copy)
    assert creds == {**creds, "present": False, "valid": False, "generator": None}


def test_flipped_video_bytes_break_the_hard_binding(signed: Signed, tmp_path: Path) -> None:
    data = bytearray(signed.out.read_bytes())
    mdat = data.find(b"mdat")
    assert mdat > 0
    for i in range(mdat + 64, mdat + 96):
        data[i] ^= 0xFF
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    creds = read_credentials(damaged)
    assert creds["present"] and not creds["valid"]
    assert "assertion.bmffHash.mismatch" in creds["errors"]
    assert creds["generator"] is not None  # what the manifest claims is still reported, flagged invalid


def test_operator_certificate_is_used(
    signed: Signed, small_config: AppConfig, voice_wav: Path, tmp_path: Path
) -> None:
    chain, key, root = make_chain(tmp_path / "operator", "Example Studio")
    credentials_dir = tmp_path / "credentials"
    result = render_file(
        operator_config(small_config, chain, key), audio_path=voice_wav, out_path=tmp_path / "op.mp4",
        progress=False, credentials_dir=credentials_dir,
    )
    creds = result.content_credentials
    assert creds is not None and creds["valid"], creds
    assert creds["signer"] == "Example Studio signer" != read_credentials(signed.out)["signer"]
    assert creds["issuer"] == "Example Studio"
    assert read_credentials(tmp_path / "op.mp4", trust_anchors=root)["trusted"]
    assert not credentials_dir.exists()  # no local chain is made when the operator's is given


def test_unusable_operator_key_is_a_clear_error(small_config: AppConfig, voice_wav: Path, tmp_path: Path) -> None:
    chain, key, _ = make_chain(tmp_path / "operator", "Example Studio")
    missing = operator_config(small_config, chain, tmp_path / "nowhere.key")
    out = tmp_path / "out" / "clip.mp4"
    with pytest.raises(CredentialsError, match="signing_key"):
        render_file(missing, audio_path=voice_wav, out_path=out, progress=False, credentials_dir=tmp_path / "c")
    assert list(out.parent.iterdir()) == []  # neither an unsigned output nor a temporary file is left

    garbage = tmp_path / "garbage.key"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    _, other_key, _ = make_chain(tmp_path / "other", "Other Studio")
    not_a_chain = tmp_path / "chain.txt"
    not_a_chain.write_text("hello\n")
    for cert_path, key_path, message in [
        (chain, garbage, "signing_key"),
        (chain, other_key, "does not belong"),
        (not_a_chain, key, "signing_certificate"),
    ]:
        with pytest.raises(CredentialsError, match=message):
            sign_video(
                Path(voice_wav), tmp_path / "x.mp4", operator_config(small_config, cert_path, key_path).disclosure,
                credentials_dir=tmp_path / "c", portrait_name="p", audio_name="a", watermark=None,
            )
        assert not (tmp_path / "x.mp4").exists()


def test_unreadable_files_raise(signed: Signed, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 100)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(signed.out.read_bytes()[: signed.out.stat().st_size // 2])
    for path in (text, truncated, tmp_path / "missing.mp4"):
        with pytest.raises(CredentialsError):
            read_credentials(path)


def test_credentials_off_renders_unsigned_with_a_warning(
    small_config: AppConfig, voice_wav: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = with_overrides(small_config, disclosure={"content_credentials": False})
    out = tmp_path / "plain.mp4"
    with caplog.at_level(logging.WARNING, logger="avatar.render"):
        result = render_file(config, audio_path=voice_wav, out_path=out, progress=False, credentials_dir=tmp_path / "c")
    assert result.content_credentials is None
    assert [r for r in caplog.records if "content credentials" in r.getMessage()] != []
    assert sum("content credentials" in r.getMessage() for r in caplog.records) == 1
    creds = read_credentials(out)
    assert not creds["present"] and not creds["valid"] and creds["generator"] is None
    assert not (tmp_path / "c").exists()


def test_default_credentials_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_credentials_dir() == tmp_path / "data" / "talking-portrait" / "credentials"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_credentials_dir() == tmp_path / "home" / ".local" / "share" / "talking-portrait" / "credentials"


def test_expired_local_chain_is_replaced(tmp_path: Path, signed: Signed) -> None:
    """A local chain past its date is moved aside and a new one made (still one chain in use)."""
    credentials_dir = tmp_path / "credentials"
    shutil.copytree(signed.credentials_dir, credentials_dir)
    chain_dir = local_root_path(credentials_dir).parent
    key = serialization.load_pem_private_key((chain_dir / "signer.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    expired = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    (chain_dir / "chain.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    fresh = signing_material(AppConfig().disclosure, credentials_dir).chain_pem
    assert x509.load_pem_x509_certificates(fresh)[0].not_valid_after_utc > now
    assert (chain_dir / "chain.pem").read_bytes() == fresh
    assert len([p for p in credentials_dir.iterdir() if p.name.startswith("expired-")]) == 1
