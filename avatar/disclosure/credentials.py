"""C2PA content credentials of rendered videos: sign an MP4 with a manifest, read one back.

The manifest says the video was made by this software, from a portrait and an audio track (their
names only), with the IPTC source type "trainedAlgorithmicMedia", and carries what the invisible
watermark of the same video holds (service id, session number) in the assertion
`org.talking-portrait.watermark`.

Signing uses the operator's certificate chain and key when `[disclosure] signing_certificate` and
`signing_key` are set, else a local chain made once in `credentials_dir`: a root CA whose key is
discarded right after it issues one ES256 (P-256) signing certificate. That chain is on no public
trust list, so a reader reports such a manifest as valid (intact, signed, bound to these bytes) but
not trusted; see `read_credentials`.

Everything here works offline: no timestamp authority, no OCSP, no remote manifests, and the C2PA
library is given an empty list of allowed network hosts, which makes it refuse every request.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from avatar.config import DisclosureConfig
from avatar.errors import CredentialsError

log = logging.getLogger(__name__)

GENERATOR_NAME = "talking-portrait"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
WATERMARK_LABEL = "org.talking-portrait.watermark"

# Subdirectory of credentials_dir that holds the local chain; created whole by one rename.
_LOCAL_CHAIN_DIR = "local-chain"
_CHAIN_FILE = "chain.pem"  # signing certificate, then the root
_KEY_FILE = "signer.key"  # PKCS#8 PEM, mode 0600
_ROOT_FILE = "root.pem"  # the root alone: what a reader may be given as a trust anchor
_LOCAL_VALIDITY = datetime.timedelta(days=5 * 365)
_RENEW_BEFORE = datetime.timedelta(days=1)

# No network, ever: the empty host list makes c2pa-rs refuse every HTTP request it might make.
_OFFLINE: dict[str, Any] = {
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    "core": {"allowed_network_hosts": []},
}
# Validation failures that speak of trust in the signer, not of the manifest's integrity.
_TRUST_CODES = frozenset({"signingCredential.untrusted", "timeStamp.untrusted"})
# Success codes of a hard binding (the hash of the asset's bytes) that matched.
_BINDING_CODES = frozenset({"assertion.bmffHash.match", "assertion.dataHash.match", "assertion.boxesHash.match"})
_TEXT_ART_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
_MIME_BY_SUFFIX = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime"}


def default_credentials_dir() -> Path:
    """Where the local signing chain lives: `$XDG_DATA_HOME/talking-portrait/credentials`, else
    `~/.local/share/talking-portrait/credentials`. It reads the environment, so only the command-line
    layer (the render entry point) calls it; library code takes the directory as an argument."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / GENERATOR_NAME / "credentials"


def software_version() -> str:
    """This package's installed version, or "0+unknown" when it is run from an uninstalled tree."""
    try:
        return importlib.metadata.version(GENERATOR_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class SigningMaterial:
    """A PEM certificate chain (signing certificate first), its PEM private key and the C2PA algorithm."""

    chain_pem: bytes
    key_pem: bytes
    alg: c2pa.C2paSigningAlg


def sign_video(
    unsigned_path: Path,
    out_path: Path,
    config: DisclosureConfig,
    *,
    credentials_dir: Path,
    portrait_name: str,
    audio_name: str,
    watermark: dict | None,
) -> None:
    """Write `out_path`: the MP4 at `unsigned_path` with an embedded, signed C2PA manifest.

    The signed file is written beside `out_path` and renamed into place, so `out_path` is either
    complete or untouched. Raises CredentialsError when the signing material is unusable or the
    library cannot sign this file."""
    unsigned_path, out_path = Path(unsigned_path), Path(out_path)
    mime = _MIME_BY_SUFFIX.get(out_path.suffix.lower())
    if mime is None:
        raise CredentialsError(
            f"{out_path}: content credentials are embedded in MP4 or MOV files only "
            "(set [disclosure] content_credentials = false for other containers)"
        )
    material = signing_material(config, credentials_dir)
    manifest = _manifest(out_path.name, mime, portrait_name, audio_name, watermark)
    tmp = out_path.with_name(f".{out_path.name}.{secrets.token_hex(4)}.signing")
    try:
        with (
            c2pa.Context.from_dict({**_OFFLINE, "builder": {"thumbnail": {"enabled": False}}}) as context,
            c2pa.Signer.from_info(
                c2pa.C2paSignerInfo(material.alg, material.chain_pem, material.key_pem, None)
            ) as signer,
            c2pa.Builder(manifest, context=context) as builder,
            open(unsigned_path, "rb") as source,
            open(tmp, "w+b") as dest,
        ):
            builder.sign(signer, mime, source, dest)
        os.replace(tmp, out_path)
    except c2pa.C2paError as exc:
        raise CredentialsError(f"could not sign {out_path.name}: {exc}") from exc
    except OSError as exc:
        raise CredentialsError(f"could not write the signed {out_path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("signed %s with content credentials", out_path)


def _manifest(title: str, mime: str, portrait_name: str, audio_name: str, watermark: dict | None) -> dict:
    """The manifest definition: who made it, how (created by a trained model), from what (names only)."""
    version = software_version()
    assertions: list[dict[str, Any]] = [
        {
            "label": "c2pa.actions",
            "data": {
                "actions": [
                    {
                        "action": "c2pa.created",
                        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                        "softwareAgent": {"name": GENERATOR_NAME, "version": version},
                        "description": "talking-portrait video animated from a portrait and an audio track",
                    }
                ]
            },
        }
    ]
    if watermark is not None:
        assertions.append({"label": WATERMARK_LABEL, "data": dict(watermark)})
    # Ingredients without data: a title and a relationship say what went in, never its content.
    ingredients = [
        {"title": portrait_name, "relationship": "inputTo", "description": "portrait"},
        {"title": audio_name, "relationship": "inputTo", "description": "audio track"},
    ]
    return {
        "claim_generator_info": [{"name": GENERATOR_NAME, "version": version}],
        "title": title,
        "format": mime,
        "assertions": assertions,
        "ingredients": ingredients,
    }


def signing_material(config: DisclosureConfig, credentials_dir: Path) -> SigningMaterial:
    """The operator's chain and key when configured (checked here, for a clear error), else the
    local chain in `credentials_dir`, made on first use."""
    if config.signing_certificate or config.signing_key:
        return _operator_material(Path(config.signing_certificate).expanduser(), Path(config.signing_key).expanduser())
    return _local_material(Path(credentials_dir))


def _operator_material(cert_path: Path, key_path: Path) -> SigningMaterial:
    chain_pem = _read(cert_path, "disclosure.signing_certificate")
    key_pem = _read(key_path, "disclosure.signing_key")
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise CredentialsError(f"disclosure.signing_certificate {cert_path}: not a PEM certificate chain") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsError(
            f"disclosure.signing_key {key_path}: not an unencrypted PEM private key ({exc})"
        ) from exc
    if _spki(key.public_key()) != _spki(certs[0].public_key()):
        raise CredentialsError(
            f"disclosure.signing_key {key_path} does not belong to the first certificate of {cert_path}"
        )
    return SigningMaterial(chain_pem, key_pem, _algorithm(key, key_path))


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialsError(f"{setting} {path}: cannot be read ({exc.strerror or exc})") from exc


def _algorithm(key: Any, key_path: Path) -> c2pa.C2paSigningAlg:
    """The C2PA signature algorithm for a key (C2PA allows ES256/384/512, PS256/384/512, Ed25519)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {
            "secp256r1": c2pa.C2paSigningAlg.ES256,
            "secp384r1": c2pa.C2paSigningAlg.ES384,
            "secp521r1": c2pa.C2paSigningAlg.ES512,
        }
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    elif isinstance(key, rsa.RSAPrivateKey):
        return c2pa.C2paSigningAlg.PS256
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return c2pa.C2paSigningAlg.ED25519
    raise CredentialsError(f"disclosure.signing_key {key_path}: C2PA needs a P-256/384/521, RSA or Ed25519 key")


def _local_material(credentials_dir: Path) -> SigningMaterial:
    """The local chain, created once: all files are written into a fresh directory that is renamed
    into place in one step, so concurrent first uses never see (or make) a half-written chain."""
    chain_dir = credentials_dir / _LOCAL_CHAIN_DIR
    material = _load_local(chain_dir)
    if material is not None:
        return material
    try:
        credentials_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".local-chain-", dir=credentials_dir))  # mode 0700
    except OSError as exc:
        raise CredentialsError(f"cannot create the local signing chain in {credentials_dir}: {exc}") from exc
    try:
        _write_local_chain(staging)
        material = _load_local(chain_dir)  # again: another process may have installed one meanwhile
        if material is not None:
            return material
        if chain_dir.exists():  # expired or incomplete: move it aside (another process may do the same)
            try:
                chain_dir.rename(credentials_dir / f"expired-{datetime.date.today():%Y%m%d}-{secrets.token_hex(3)}")
            except OSError:
                pass
        try:
            staging.rename(chain_dir)
            log.info("created a local content-credentials signing chain in %s", chain_dir)
        except OSError:
            pass  # another process installed its chain first: use that one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    material = _load_local(chain_dir)
    if material is None:
        raise CredentialsError(f"the local signing chain in {chain_dir} could not be created")
    return material


def _load_local(chain_dir: Path) -> SigningMaterial | None:
    """The local chain when present and valid for at least another day; None when absent or expired."""
    try:
        chain_pem = (chain_dir / _CHAIN_FILE).read_bytes()
        key_pem = (chain_dir / _KEY_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot read the local signing chain in {chain_dir}: {exc}") from exc
    try:
        signer = x509.load_pem_x509_certificates(chain_pem)[0]
        serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsError(
            f"the local signing chain in {chain_dir} is damaged; delete that directory to make a new one"
        ) from exc
    if signer.not_valid_after_utc - _RENEW_BEFORE < datetime.datetime.now(datetime.UTC):
        return None
    return SigningMaterial(chain_pem, key_pem, c2pa.C2paSigningAlg.ES256)


def _write_local_chain(directory: Path) -> None:
    """A root CA and one signing certificate it issues, with the profile C2PA checks: v3, ECDSA P-256
    with SHA-256, root with CA basic constraints and keyCertSign, signer not a CA, digitalSignature
    (critical), an EKU of email protection and document signing, key identifiers both ways."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        # No host or user name: the chain is embedded in every video this machine signs.
        return x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{GENERATOR_NAME} (local, unverified)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])

    root_key = ec.generate_private_key(ec.SECP256R1())
    signer_key = ec.generate_private_key(ec.SECP256R1())
    no_usage = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
         "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(name(f"{GENERATOR_NAME} local root"))
        .issuer_name(name(f"{GENERATOR_NAME} local root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _LOCAL_VALIDITY + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(**{**no_usage, "key_cert_sign": True, "crl_sign": True}), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    signer = (
        x509.CertificateBuilder()
        .subject_name(name(f"{GENERATOR_NAME} local signer"))
        .issuer_name(root.subject)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _LOCAL_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(**{**no_usage, "digital_signature": True}), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    root_pem = root.public_bytes(serialization.Encoding.PEM)
    key_pem = signer_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_file(directory / _KEY_FILE, key_pem, 0o600)
    _write_file(directory / _CHAIN_FILE, signer.public_bytes(serialization.Encoding.PEM) + root_pem, 0o644)
    _write_file(directory / _ROOT_FILE, root_pem, 0o644)
    # The root's key is not kept: nothing else can ever be issued under this root.


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start (a key is never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def local_root_path(credentials_dir: Path) -> Path:
    """The local chain's root certificate (PEM), to give `read_credentials` as a trust anchor."""
    return Path(credentials_dir) / _LOCAL_CHAIN_DIR / _ROOT_FILE


def read_credentials(path: Path, *, trust_anchors: Path | None = None) -> dict[str, Any]:
    """What the C2PA manifest of a media file says, offline.

    Returns `present` (a manifest store is embedded), `valid`, `trusted`, `generator`
    ("talking-portrait 0.1.0"), `signer` and `issuer` (the signing certificate's common name and
    issuing organisation), `source_type`, `watermark` (the org.talking-portrait.watermark assertion),
    `ingredients` (titles), `errors` (validation failure codes that make it invalid), `trust`
    (the validation state and, when not trusted, why) and `validation_state` as the library says it.

    `valid` means the claim signature verifies against the signing certificate in the manifest and
    the hard binding (the hash over the file's bytes) matches: the manifest is intact and belongs to
    exactly these bytes. It says nothing of who the signer is. `trusted` says that in addition the
    signing certificate chains to a trust anchor: the library's own list, or the PEM roots in
    `trust_anchors` (e.g. `local_root_path(credentials_dir)` to trust this machine's local chain).
    A local chain is on no public list, so its renders are valid but not trusted by default.

    A file without a manifest gives present=False, valid=False, generator=None. A file that av cannot
    open as media, or whose manifest store the C2PA library cannot parse, raises CredentialsError."""
    path = Path(path)
    _check_media(path)
    settings: dict[str, Any] = dict(_OFFLINE)
    if trust_anchors is not None:
        try:
            settings["trust"] = {"user_anchors": Path(trust_anchors).read_text(encoding="ascii")}
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(f"trust anchors {trust_anchors}: cannot be read ({exc})") from exc
    try:
        with c2pa.Context.from_dict(settings) as context, open(path, "rb") as stream:
            reader = c2pa.Reader.try_create(None, stream, None, context)
            if reader is None:
                return _absent()
            with reader:
                store = json.loads(reader.json())
    except c2pa.C2paError.NotSupported:
        return _absent()  # av reads it, but it is no format that can carry a C2PA manifest
    except c2pa.C2paError as exc:
        raise CredentialsError(f"{path}: its content credentials cannot be read ({exc})") from exc
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    return _summarise(store)


def _check_media(path: Path) -> None:
    """Raise CredentialsError unless av opens `path` with at least one audio or video stream. FFmpeg
    shows any *.txt file as "video" of ANSI art (its tty demuxer); such text codecs do not count."""
    try:
        with av.open(str(path)) as container:
            streams = [
                s for s in container.streams
                if s.type in ("audio", "video") and s.codec_context.name not in _TEXT_ART_CODECS
            ]
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{path}: not a media file that can be read ({exc})") from exc
    if not streams:
        raise CredentialsError(f"{path}: not a media file (no audio or video streams)")


def _absent() -> dict[str, Any]:
    return {
        "present": False, "valid": False, "trusted": False, "generator": None, "signer": None, "issuer": None,
        "signer_serial": None, "source_type": None, "watermark": None, "ingredients": [], "errors": [], "trust": None,
        "validation_state": None,
    }


def _summarise(store: dict[str, Any]) -> dict[str, Any]:
    result = _absent()
    result["present"] = True
    manifest = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    state = store.get("validation_state")
    active = store.get("validation_results", {}).get("activeManifest", {})
    failures = [str(item.get("code")) for item in active.get("failure", [])]
    successes = {str(item.get("code")) for item in active.get("success", [])}
    if not active:  # older stores: one flat list of failures
        failures = [str(item.get("code")) for item in store.get("validation_status", [])]
    errors = [code for code in failures if code not in _TRUST_CODES]
    if not manifest:
        errors.append("manifest.missing")
    if "claimSignature.validated" not in successes:
        errors.append("claimSignature.notValidated")
    if not successes & _BINDING_CODES:
        errors.append("hardBinding.notValidated")
    result["errors"] = sorted(set(errors), key=errors.index)
    result["valid"] = not result["errors"]
    result["trusted"] = result["valid"] and state == "Trusted"
    result["validation_state"] = state
    if result["trusted"]:
        result["trust"] = "Trusted"
    elif not result["valid"]:
        result["trust"] = "not trusted: the manifest is not valid"
    else:
        result["trust"] = "not trusted: the signing certificate does not chain to a trust anchor given to the reader"
    result["generator"] = _generator(manifest)
    info = manifest.get("signature_info") or {}
    result["signer"] = info.get("common_name")
    result["issuer"] = info.get("issuer")
    result["signer_serial"] = info.get("cert_serial_number")
    result["ingredients"] = [i.get("title") for i in manifest.get("ingredients", []) if isinstance(i, dict)]
    for assertion in manifest.get("assertions", []):
        label = str(assertion.get("label", ""))
        data = assertion.get("data")
        if label == WATERMARK_LABEL and isinstance(data, dict):
            result["watermark"] = data
        elif label.split("__")[0] in ("c2pa.actions", "c2pa.actions.v2") and isinstance(data, dict):
            for action in data.get("actions", []):
                if action.get("action") == "c2pa.created" and result["source_type"] is None:
                    result["source_type"] = action.get("digitalSourceType")
    return result


def _generator(manifest: dict[str, Any]) -> str | None:
    """The claim generator as "name version" (claim_generator_info), or the v1 claim_generator string."""
    infos = manifest.get("claim_generator_info") or []
    if infos and isinstance(infos[0], dict) and infos[0].get("name"):
        version = infos[0].get("version")
        return f"{infos[0]['name']} {version}" if version else str(infos[0]["name"])
    generator = manifest.get("claim_generator")
    return str(generator) if generator else None
