"""Artifacts every worker shares: step outputs (the Dagster IO manager's JSON), dataset snapshots, vector
files, per-query tables and the embedding cache's shared tier.

A store is rooted at a local folder or an fsspec URL (`s3://bucket/prefix`, `gs://...`), opened through
universal-pathlib; keys are '/'-separated paths under the root. A step writes a file or folder at
`local_path(key)` and `publish`es it; the reference it returns (the local path, or the URL) goes into the
step's output, and a step on any worker turns it back into a local path with `fetch_file` / `fetch_dir`.

- Local root (the default: the results dir, so one machine keeps its files where they always were): used in
  place, nothing is copied, a reference is the file's path.
- Remote root ($SIE_EVALS_ARTIFACTS_URL): files are staged and downloaded in a per-worker local cache
  (<cache dir>/artifacts/<hash of scheme://host>/<path>), each downloaded once: a file is verified by its size
  and re-fetched when the store's version of it (ETag/mtime) changes; a folder is published file by file and
  then its manifest (names, sizes, sha256), so a folder without a manifest is incomplete and never read, and a
  download is checked against the manifest's sizes and hashes before it is renamed into place.
  Storage options (endpoint_url, ...) come from $SIE_EVALS_ARTIFACTS_OPTIONS (a JSON object) or the resource's
  config; credentials only from the backend's own environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS), never here.

What does not go here: saved targets and measurement history need atomic rename and file locks, which object
stores lack. They stay in the model configs dir (lib/core/paths.py: model_configs_dir), which in a deployment
must be one writable volume every worker mounts (ReadWriteMany), as the results dir is.
"""

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from upath import UPath

from sie_evals.lib.core import paths
from sie_evals.lib.core.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from sie_evals.lib.core.digests import file_sha256
from sie_evals.lib.core.errors import ConfigError, EngineError, InputError, SieEvalsError
from sie_evals.lib.core.urls import redact_text, redact_url

ARTIFACTS_URL_ENV = "SIE_EVALS_ARTIFACTS_URL"
ARTIFACTS_OPTIONS_ENV = "SIE_EVALS_ARTIFACTS_OPTIONS"
MANIFEST = "_manifest.json"
LOCAL_SCHEMES = ("", "file", "local")


def is_url(ref: str) -> bool:
    """True for a reference on remote storage (`s3://...`); False for a local path or file:// URL."""
    return "://" in ref and urlsplit(ref).scheme not in LOCAL_SCHEMES


def _local(ref: str) -> Path:
    return Path(ref.removeprefix("file://").removeprefix("local://")).expanduser()


def env_options() -> dict[str, Any]:
    """fsspec storage options from $SIE_EVALS_ARTIFACTS_OPTIONS (a JSON object; {} when unset)."""
    text = os.environ.get(ARTIFACTS_OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"${ARTIFACTS_OPTIONS_ENV}: not valid JSON: {err}") from None
    if not isinstance(options, dict):
        raise ConfigError(f"${ARTIFACTS_OPTIONS_ENV}: must be a JSON object of fsspec storage options")
    return options


def _check_key(key: str) -> str:
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts or "\\" in key:
        raise ValueError(f"artifact key {key!r} must be a relative '/'-separated path without '..'")
    return key.strip("/")


def _version(info: Mapping[str, Any]) -> str:
    """What identifies one version of a remote file across backends (S3 ETag, GCS generation, mtime)."""
    fields = ("size", "ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "updated")
    return json.dumps({k: str(info[k]) for k in fields if info.get(k) is not None}, sort_keys=True)


@contextmanager
def _storage_errors(what: str, shown: str, raw_root: str = "") -> Iterator[None]:
    """Failures of the storage backend (unreachable, denied, throttled) as an EngineError naming the
    redacted location, never a traceback or a URL's credentials."""
    try:
        yield
    except SieEvalsError:
        raise
    except Exception as err:  # fsspec backends raise their own types (botocore, aiohttp, gcsfs)
        message = redact_text(str(err), raw_root) if raw_root else str(err)
        raise EngineError(f"artifact store: {what} {shown}: {type(err).__name__}: {message}") from None


class ArtifactStore:
    """Files and folders under one root (a local folder or an fsspec URL), staged and fetched through a
    per-worker local cache folder when the root is remote."""

    def __init__(
        self, root: str | os.PathLike[str], local_cache: Path, storage_options: Mapping[str, Any] | None = None
    ):
        text = os.fspath(root)
        self.remote = is_url(text)
        self.options = dict(storage_options or {})
        self.local_cache = Path(local_cache).expanduser() / "artifacts"
        self._raw_root = text if self.remote else ""  # only to redact it from a backend's error messages
        if self.remote:
            # references never carry the root's user info (they are written into outputs and shown in the UI)
            self.url = redact_url(text.rstrip("/"))
            self._root: Any = UPath(text.rstrip("/"), **self.options)
        else:
            self._root = _local(text).resolve()
            self.url = str(self._root)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    def child(self, prefix: str) -> "ArtifactStore":
        """The store rooted at `prefix` under this one (same options and local cache)."""
        store = object.__new__(ArtifactStore)
        store.__dict__.update(self.__dict__)
        store._root = self._root / _check_key(prefix)
        store.url = f"{self.url}/{_check_key(prefix)}"
        return store

    def ref(self, key: str) -> str:
        """What a step's output records for `key`: the local path, or the URL."""
        return f"{self.url}/{_check_key(key)}" if self.remote else str(self._root / _check_key(key))

    def local_path(self, key: str) -> Path:
        """Where a step writes `key` before `publish`: the final path on a local root, else its place in
        this worker's local cache."""
        return self._cached(self.ref(key)) if self.remote else self._root / _check_key(key)

    def _cached(self, url: str) -> Path:
        parts = urlsplit(url)
        origin = hashlib.sha256(f"{parts.scheme}://{parts.netloc}".encode()).hexdigest()[:16]
        rel = PurePosixPath(parts.path.lstrip("/"))
        if ".." in rel.parts:
            raise InputError(f"{redact_url(url)}: an artifact reference may not contain '..'")
        return self.local_cache / origin / rel

    def _upath(self, url: str) -> Any:
        if url.startswith(self.url + "/") or url == self.url:  # keep the root's own (unredacted) form
            return self._root / url[len(self.url) :].lstrip("/") if url != self.url else self._root
        return UPath(url, **self.options)

    # -- writing -------------------------------------------------------------------------------------------

    def publish(self, key: str) -> str:
        """Make the file or folder written at `local_path(key)` visible to every worker; returns its reference.
        A folder's manifest goes last, so a reader never takes a half-published folder for a whole one."""
        local = self.local_path(key)
        if not local.exists():
            raise EngineError(f"artifact store: nothing to publish at {local}")
        if not self.remote:
            return self.ref(key)
        target = self._root / _check_key(key)
        shown = self.ref(key)
        with _storage_errors("cannot write", shown, self._raw_root):
            if local.is_dir():
                files = {
                    p.relative_to(local).as_posix(): p
                    for p in sorted(local.rglob("*"))
                    if p.is_file() and not _hidden(p, local) and p.relative_to(local).as_posix() != MANIFEST
                }
                manifest = {rel: {"size": p.stat().st_size, "sha256": file_sha256(p)} for rel, p in files.items()}
                raw = (json.dumps({"files": manifest}, indent=1, sort_keys=True) + "\n").encode()
                try:
                    published = target.fs.cat_file((target / MANIFEST).path)
                except FileNotFoundError:
                    published = None
                if published != raw:  # the same folder published before (a content-named snapshot): no upload
                    for rel, path in files.items():
                        target.fs.put_file(str(path), (target / rel).path)
                    target.fs.pipe_file((target / MANIFEST).path, raw)
                atomic_write_bytes(local / MANIFEST, raw)  # this worker's copy is current: no download
            else:
                target.fs.put_file(str(local), target.path)
                atomic_write_text(_version_marker(local), _version(target.fs.info(target.path)))
        return shown

    def write_bytes(self, key: str, data: bytes) -> str:
        """`data` under `key` in one step (atomic on a local root; one PUT on object storage)."""
        if not self.remote:
            atomic_write_bytes(self.local_path(key), data)
            return self.ref(key)
        target = self._root / _check_key(key)
        with _storage_errors("cannot write", self.ref(key), self._raw_root):
            target.fs.pipe_file(target.path, data)
        return self.ref(key)

    # -- reading -------------------------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes | None:
        """The bytes under `key`, None when there is nothing there."""
        if not self.remote:
            try:
                return self.local_path(key).read_bytes()
            except FileNotFoundError:
                return None
        target = self._root / _check_key(key)
        with _storage_errors("cannot read", self.ref(key), self._raw_root):
            try:
                return target.fs.cat_file(target.path)
            except FileNotFoundError:
                return None

    def fetch_file(self, ref: str) -> Path:
        """A local path holding the file `ref` names (a path, or a URL on remote storage), downloaded into this
        worker's cache unless the copy there is of the same version. Missing: InputError."""
        path = self.find_file(ref, missing_ok=False)
        assert path is not None  # find_file raises instead when not missing_ok
        return path

    def find_file(self, ref: str, missing_ok: bool = True) -> Path | None:
        """As `fetch_file`, but None when there is no such file."""
        if not is_url(ref):
            path = _local(ref)
            if path.is_file():
                return path
            if missing_ok:
                return None
            raise InputError(f"{path}: artifact missing; rematerialize the step that writes it")
        shown = redact_url(ref)
        dest = self._cached(ref)
        remote = self._upath(ref)
        with _storage_errors("cannot read", shown, self._raw_root):
            remote.fs.invalidate_cache(remote.path)  # a listing cached earlier in this process may be stale
            try:
                info = remote.fs.info(remote.path)
            except FileNotFoundError:
                info = None
            if info is None or info.get("type") == "directory":
                if missing_ok:
                    return None
                raise InputError(f"{shown}: artifact missing; rematerialize the step that writes it")
            version, marker = _version(info), _version_marker(dest)
            if dest.is_file() and marker.is_file() and marker.read_text() == version:
                return dest
            size = int(info["size"])

            def download(tmp: Path) -> None:
                remote.fs.get_file(remote.path, str(tmp))
                if tmp.stat().st_size != size:
                    raise EngineError(
                        f"artifact store: {shown}: downloaded {tmp.stat().st_size} bytes, expected {size}"
                    )

            atomic_write(dest, download)
            atomic_write_text(marker, version)
        return dest

    def fetch_dir(self, ref: str) -> Path:
        """A local folder holding the published folder `ref`, downloaded (verified against its manifest)
        into this worker's cache unless the copy there has the same manifest."""
        if not is_url(ref):
            return _local(ref)
        shown = redact_url(ref)
        remote = self._upath(ref)
        with _storage_errors("cannot read", shown, self._raw_root):
            try:
                raw = remote.fs.cat_file((remote / MANIFEST).path)
            except FileNotFoundError:
                raise InputError(
                    f"{shown}: artifact folder missing or incomplete (no {MANIFEST}); "
                    "rematerialize the step that writes it"
                ) from None
            try:
                files = json.loads(raw)["files"]
                entries = {rel: (int(e["size"]), str(e["sha256"])) for rel, e in files.items()}
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise InputError(f"{shown}/{MANIFEST}: not a valid artifact manifest ({err})") from None
            dest = self._cached(ref)
            if _same_manifest(dest, raw, entries):
                return dest
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
            try:
                for rel, (size, digest) in entries.items():
                    if ".." in PurePosixPath(rel).parts or rel.startswith("/"):
                        raise InputError(f"{shown}/{MANIFEST}: file name {rel!r} leaves the folder")
                    local = tmp / rel
                    local.parent.mkdir(parents=True, exist_ok=True)
                    remote.fs.get_file((remote / rel).path, str(local))
                    if local.stat().st_size != size or file_sha256(local) != digest:
                        raise EngineError(
                            f"artifact store: {shown}/{rel}: downloaded file does not match its manifest "
                            f"(size {local.stat().st_size} vs {size}, or sha256 differs)"
                        )
                (tmp / MANIFEST).write_bytes(raw)
                if not _same_manifest(dest, raw, entries):  # another step on this worker may have got there first
                    _replace_dir(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return dest


def _hidden(path: Path, root: Path) -> bool:
    """Temp files of an atomic write (.name.xxx.tmp) and this module's version markers."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _version_marker(path: Path) -> Path:
    return path.parent / f".{path.name}.version"


def _same_manifest(dest: Path, raw: bytes, entries: Mapping[str, tuple[int, str]]) -> bool:
    try:
        if (dest / MANIFEST).read_bytes() != raw:
            return False
        return all((dest / rel).stat().st_size == size for rel, (size, _) in entries.items())
    except OSError:
        return False


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Rename `tmp` to `dest`, setting aside an older copy there; another process that got there first with
    the same content wins (its copy is as good)."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.old"
        try:
            os.replace(dest, old)
        except FileNotFoundError:
            old = None
    try:
        os.replace(tmp, dest)
    except OSError:
        if not (dest / MANIFEST).is_file():
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def find_shared_file(ref: str) -> Path | None:
    """The file a reference names (a path, or a URL on the store) on this worker, None if there is none; for
    code without the settings resource (the report, reading references from the instance's metadata)."""
    return ArtifactStore(paths.results_dir(), paths.cache_dir(), env_options()).find_file(ref)


def open_store(
    url: str | None,
    options: Mapping[str, Any] | None,
    default_root: Path,
    local_cache: Path,
) -> ArtifactStore:
    """The store at `url` (else $SIE_EVALS_ARTIFACTS_URL, else the local `default_root`), with `options`
    (resource config; else $SIE_EVALS_ARTIFACTS_OPTIONS) as its fsspec storage options."""
    root = url or os.environ.get(ARTIFACTS_URL_ENV) or default_root
    if options is not None:
        _no_credentials(options, "artifacts_options")
    return ArtifactStore(root, local_cache, env_options() if options is None else options)


SECRET_OPTIONS = {"key", "secret", "password", "session_token", "aws_access_key_id", "aws_secret_access_key"}
SECRET_OPTIONS |= {"aws_session_token", "account_key", "sas_token", "client_secret"}


def _no_credentials(options: Mapping[str, Any], where: str) -> None:
    """Resource config is stored with each run and shown in the UI: a credential there is a ConfigError
    (naming the field, never its value); credentials come from the backend's own environment variables."""
    for name, value in options.items():
        field = f"{where}.{name}"
        if name.lower() in SECRET_OPTIONS or (name == "token" and isinstance(value, Mapping)):
            raise ConfigError(
                f"{field}: credentials may not be set in config (it is stored with each run and shown in the UI); "
                "set them in the worker's environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "GOOGLE_APPLICATION_CREDENTIALS, ...)"
            )
        if isinstance(value, Mapping):
            _no_credentials(value, field)
