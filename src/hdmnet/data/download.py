"""Fetch, verify and extract the data set archives (`hdmnet download`).

An archive comes from an http(s) URL, a ``file://`` URL, a plain local path, or a file the user
already has. Downloads stream into ``<name>.part`` (kept between runs so an interrupted download
resumes with an HTTP Range request), are retried with exponential backoff, verified (size, MD5,
SHA-256) and only then renamed into place. A ``<name>.verified`` marker records the verified
size, mtime and digests (always the SHA-256, computed in the same read as the spec's checksums),
so a re-run skips the archive without hashing it again and ``archive_digest`` answers from it.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdmnet.data.archives import safe_extract
from hdmnet.data.errors import DataError
from hdmnet.errors import HdmnetError, MissingFileError
from hdmnet.fileio import CHUNK, file_digests, reporting_full_disk, write_json
from hdmnet.progress import ByteProgress

log = logging.getLogger(__name__)

USER_AGENT = "hdmnet-download/0.1 (+python urllib)"
MAX_BACKOFF = 60.0
_HEX = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")
# Client errors worth another try: timeout, too early, rate-limited. Other 4xx are permanent.
_RETRY_STATUS = {408, 425, 429}
# Always recorded in the verification marker: the data stage's record names archives by it.
RECORDED = "sha256"


class ChecksumError(HdmnetError, ValueError):
    """A file's size or digest differs from the expected value.

    ``path`` names the file as the user knows it (their file, or the URL it came from), ``archive``
    the archive's file name, ``sha256`` the file's SHA-256 when it was computed (a digest
    mismatch; a size mismatch stops before reading). ``message`` replaces the plain one (the data
    stage says whose checksum it is and what to do).
    """

    def __init__(
        self,
        path: Path | str,
        kind: str,
        expected: object,
        actual: object,
        *,
        archive: str | None = None,
        sha256: str | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(message or f"{path}: {kind} mismatch: expected {expected}, got {actual}")
        self.path = path
        self.kind = kind
        self.expected = expected
        self.actual = actual
        self.archive = archive
        self.sha256 = sha256

    def named(self, path: Path | str, message: str | None = None) -> ChecksumError:
        """The same mismatch, naming the file as ``path`` (and said as ``message``)."""
        fields = (path, self.kind, self.expected, self.actual)
        return ChecksumError(*fields, archive=self.archive, sha256=self.sha256, message=message)


class DownloadError(HdmnetError, RuntimeError):
    """An archive could not be fetched from its URL."""


class _Interrupted(Exception):
    """The transfer ended early; the next attempt resumes from what we have."""


@dataclass(frozen=True)
class ArchiveSpec:
    """One archive: where it comes from, what it must hash to, and where it is extracted.

    ``url`` is an http(s) URL, a ``file://`` URL or a plain local path. ``extract_to`` is a
    sub-folder of the raw-data folder, or None for files that are used as they are.
    """

    name: str
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    extract_to: str | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name in (".", ".."):
            raise ValueError(f"archive name must be a plain file name, got {self.name!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 0):
            raise ValueError(f"{self.name}: size must be a non-negative int, got {self.size!r}")
        for kind in ("md5", "sha256"):
            value = getattr(self, kind)
            if value is not None:
                if not isinstance(value, str) or not _HEX[kind].match(value.lower()):
                    raise ValueError(f"{self.name}: {kind} must be a hex digest, got {value!r}")
                object.__setattr__(self, kind, value.lower())
        if self.extract_to is not None:
            parts = Path(self.extract_to).parts
            if not parts or Path(self.extract_to).is_absolute() or ".." in parts:
                raise ValueError(
                    f"{self.name}: extract_to must be a relative folder, got {self.extract_to!r}"
                )

    @property
    def digests(self) -> dict[str, str]:
        """The digests this spec requires, e.g. ``{"md5": "..."}``."""
        return {k: v for k in ("md5", "sha256") if (v := getattr(self, k)) is not None}


# The official archives (PAPER.md). SBD's size is only known approximately, so it is not checked.
OFFICIAL_ARCHIVES: dict[str, ArchiveSpec] = {
    "voc2012": ArchiveSpec(
        name="VOCtrainval_11-May-2012.tar",
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        size=1_999_639_040,
        md5="6cd6e144f989b92b3379bac3b3de84fd",
        extract_to="pascal",
    ),
    "sbd": ArchiveSpec(
        name="benchmark.tgz",
        url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        size=None,
        md5="82b4d87ceb2ed10f6038a1cba92111cb",
        extract_to="pascal",
    ),
    "sbd_train_noval": ArchiveSpec(
        name="train_noval.txt",
        url="http://home.bharathh.info/pubs/codes/SBD/train_noval.txt",
        size=None,
        md5="79bff800c5f0b1ec6b21080a3c066722",
        extract_to=None,
    ),
    "coco_train2014": ArchiveSpec(
        name="train2014.zip",
        url="http://images.cocodataset.org/zips/train2014.zip",
        size=13_510_573_713,
        md5="0da8c0bd3d6becc4dcb32757491aca88",
        extract_to="coco",
    ),
    "coco_val2014": ArchiveSpec(
        name="val2014.zip",
        url="http://images.cocodataset.org/zips/val2014.zip",
        size=6_645_013_297,
        md5="a3d79f5ed8d289b7a7554ce06a5782b3",
        extract_to="coco",
    ),
    "coco_annotations2014": ArchiveSpec(
        name="annotations_trainval2014.zip",
        url="http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
        size=252_872_794,
        md5="0a379cfc70b0e71301e0f377548639bd",
        extract_to="coco",
    ),
}


def specs_from_manifest(
    manifest: Mapping[str, Any], base_url_or_dir: str
) -> dict[str, ArchiveSpec]:
    """Specs for generated archives, keyed like ``OFFICIAL_ARCHIVES``.

    ``manifest`` is ``{"archives": {file name: {"size", "md5", "sha256"}}}``; each file is found
    under ``base_url_or_dir`` (an http(s)/file URL or a local folder).
    """
    official_by_name = {spec.name: (key, spec) for key, spec in OFFICIAL_ARCHIVES.items()}
    entries = manifest.get("archives")
    if not isinstance(entries, Mapping):
        raise ValueError("archive manifest has no 'archives' mapping of file name -> checksums")
    is_url = urllib.parse.urlsplit(base_url_or_dir).scheme in ("http", "https", "file")
    specs: dict[str, ArchiveSpec] = {}
    for name, entry in entries.items():
        if name not in official_by_name:
            raise ValueError(
                f"archive manifest lists {name!r}, which is not one of the known archives "
                f"({', '.join(sorted(official_by_name))})"
            )
        if not isinstance(entry, Mapping):
            raise ValueError(f"archive manifest entry for {name!r} is not a mapping: {entry!r}")
        key, official = official_by_name[name]
        if is_url:
            url = f"{base_url_or_dir.rstrip('/')}/{urllib.parse.quote(name)}"
        else:
            url = str(Path(base_url_or_dir) / name)
        specs[key] = ArchiveSpec(
            name=name,
            url=url,
            size=entry.get("size"),
            md5=entry.get("md5"),
            sha256=entry.get("sha256"),
            extract_to=official.extract_to,
        )
    return specs


def verify(path: Path, spec: ArchiveSpec) -> dict[str, str]:
    """Check ``path`` against the spec's size and digests; raise ``ChecksumError`` on mismatch.

    Returns the digests computed in that one read: the spec's and always the SHA-256.
    """
    path = Path(path)
    actual_size = path.stat().st_size
    if spec.size is not None and actual_size != spec.size:
        raise ChecksumError(path, "size", spec.size, actual_size, archive=spec.name)
    kinds = sorted({*spec.digests, RECORDED})
    log.info("checking %s of %s", "/".join(kinds), path.name)
    actual = file_digests(path, kinds)
    for kind, expected in spec.digests.items():
        if actual[kind] != expected:
            raise ChecksumError(
                path, kind, expected, actual[kind], archive=spec.name, sha256=actual[RECORDED]
            )
    return actual


def verified_marker(archive_dir: Path, spec: ArchiveSpec) -> Path:
    """Where ``fetch`` records that ``archive_dir/<name>`` passed verification."""
    return Path(archive_dir) / f"{spec.name}.verified"


def _marker_of(path: Path, spec: ArchiveSpec) -> dict[str, Any] | None:
    """The marker beside ``path`` if it still describes the file (same size and mtime)."""
    marker = verified_marker(path.parent, spec)
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        current = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    if recorded.get("size") != current.st_size or recorded.get("mtime_ns") != current.st_mtime_ns:
        return None
    return recorded


def is_verified(path: Path, spec: ArchiveSpec) -> bool:
    """True when the marker beside ``path`` matches its size/mtime and the spec's checksums."""
    recorded = _marker_of(path, spec)
    if recorded is None:
        return False
    if spec.size is not None and spec.size != recorded["size"]:
        return False
    # A changed checksum in the config must trigger a fresh check, not trust the old marker.
    return all(recorded.get(kind) == value for kind, value in spec.digests.items())


def archive_digest(path: Path, spec: ArchiveSpec) -> str:
    """The SHA-256 of a fetched archive, from its verification marker while that still matches
    the file's size and mtime; otherwise the file is read once and the digest recorded."""
    path = Path(path)
    recorded = _marker_of(path, spec)
    if recorded is not None and isinstance(recorded.get(RECORDED), str):
        return recorded[RECORDED]
    digest = file_digests(path, [RECORDED])[RECORDED]
    if recorded is not None:  # a marker from before the SHA-256 was always recorded
        write_json(verified_marker(path.parent, spec), recorded | {RECORDED: digest})
    return digest


def fetch(
    spec: ArchiveSpec,
    archive_dir: Path,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60,
    local_file: Path | None = None,
) -> Path:
    """Bring ``spec``'s archive to ``archive_dir/<name>``, verified, and return that path.

    Skips when the verification marker matches. Takes ``local_file`` (or a local ``url``) by
    hard link or copy; otherwise downloads over HTTP, resuming and retrying. A checksum mismatch
    raises ``ChecksumError`` and leaves neither the final file nor the partial download; the one
    exception is a source that already *is* ``archive_dir/<name>``, which is never deleted.
    """
    archive_dir = Path(archive_dir)
    final = archive_dir / spec.name
    source = Path(local_file) if local_file is not None else _local_source(spec.url)
    if final.exists():
        if is_verified(final, spec):
            log.info("%s already verified; skipping", final)
            return final
        if source is not None and source.exists() and os.path.samefile(source, final):
            # The user's own file is the source: check it, but never delete it.
            _write_marker(final, spec, verify(final, spec))
            return final
        try:
            digests = verify(final, spec)
        except ChecksumError as exc:
            # Not what the config expects (truncated, stale, corrupted): fetch it again.
            log.warning("%s; removing it and fetching again", exc)
            final.unlink()
            verified_marker(archive_dir, spec).unlink(missing_ok=True)
        else:
            _write_marker(final, spec, digests)
            return final

    archive_dir.mkdir(parents=True, exist_ok=True)
    part = archive_dir / f"{spec.name}.part"
    try:
        # A full disk is not retried; an HTTP part stays, so a rerun after freeing space resumes.
        with reporting_full_disk(part):
            if source is not None:
                _take_local(source, part, spec)
            else:
                _http_download(spec, part, retries=retries, backoff=backoff, timeout=timeout)
        digests = verify(part, spec)
    except ChecksumError as error:
        part.unlink(missing_ok=True)
        # Named as the user knows it (their file or the URL), not as the internal .part copy.
        raise error.named(source if source is not None else spec.url) from None
    except BaseException:
        # A local copy is cheap to redo; an HTTP .part is kept so the next run resumes.
        if source is not None:
            part.unlink(missing_ok=True)
        raise
    os.replace(part, final)
    _write_marker(final, spec, digests)
    log.info("fetched and verified %s", final)
    return final


def download_all(
    specs: list[ArchiveSpec],
    archive_dir: Path,
    raw_dir: Path,
    local_files: Mapping[str, Path] | None = None,
    **fetch_options: Any,
) -> list[Path]:
    """Fetch and verify every archive, extracting each into ``raw_dir / spec.extract_to``.

    ``local_files`` maps archive file names to files the user already has. ``fetch_options``
    (retries, backoff, timeout) go to ``fetch``. Returns the verified archive paths.
    """
    local_files = dict(local_files or {})
    unknown = set(local_files) - {spec.name for spec in specs}
    if unknown:
        raise DataError(
            f"local files given for unknown archives {sorted(unknown)}; "
            f"known: {sorted(spec.name for spec in specs)}"
        )
    paths = []
    for spec in specs:
        path = fetch(spec, archive_dir, local_file=local_files.get(spec.name), **fetch_options)
        if spec.extract_to is not None:
            # A size or checksum that matched the published one rules out a truncated archive.
            verified = spec.size is not None or bool(spec.digests)
            safe_extract(path, Path(raw_dir) / spec.extract_to, verified=verified)
        paths.append(path)
    return paths


def _write_marker(path: Path, spec: ArchiveSpec, digests: Mapping[str, str]) -> None:
    current = path.stat()
    record = {"name": spec.name, "size": current.st_size, "mtime_ns": current.st_mtime_ns}
    write_json(verified_marker(path.parent, spec), record | dict(digests))


def _local_source(url: str) -> Path | None:
    """The local path a ``file://`` URL or plain path names; None for http(s)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DataError(f"file URL with a remote host is not supported: {url}")
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "":
        return Path(url)
    raise DataError(
        f"unsupported URL scheme {parts.scheme!r} in {url} (use http(s), file or a path)"
    )


def _take_local(source: Path, part: Path, spec: ArchiveSpec) -> None:
    """Hard-link ``source`` to ``part`` (same filesystem) or copy it with a progress bar."""
    if not source.is_file():
        raise MissingFileError(f"local archive for {spec.name} not found: {source}")
    part.unlink(missing_ok=True)
    try:
        os.link(source, part)
        log.info("linked %s from %s", spec.name, source)
        return
    except OSError as exc:
        log.debug("cannot hard-link %s (%s); copying", source, exc)
    total = source.stat().st_size
    with (
        open(source, "rb") as src,
        open(part, "wb") as out,
        ByteProgress(total, desc=f"copy {spec.name}") as bar,
    ):
        while chunk := src.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))
    shutil.copystat(source, part)


def _http_download(
    spec: ArchiveSpec, part: Path, *, retries: int, backoff: float, timeout: float
) -> None:
    """Download ``spec.url`` into ``part``, resuming and retrying with exponential backoff."""
    last_error: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            delay = min(backoff * 2 ** (attempt - 1), MAX_BACKOFF)
            log.warning(
                "download of %s failed (%s); retry %d/%d in %.1fs",
                spec.url,
                last_error,
                attempt,
                retries,
                delay,
            )
            time.sleep(delay)
        try:
            _http_attempt(spec, part, timeout)
            return
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code < 500 and exc.code not in _RETRY_STATUS:
                raise DownloadError(
                    f"cannot download {spec.name} from {spec.url}: HTTP {exc.code} {exc.reason}"
                ) from exc
            last_error = exc
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
            ssl.SSLError,
            _Interrupted,
        ) as exc:
            last_error = exc
    raise DownloadError(
        f"cannot download {spec.name} from {spec.url} after {retries + 1} attempts: {last_error}"
    ) from last_error


def _http_attempt(spec: ArchiveSpec, part: Path, timeout: float) -> None:
    """One request: append to ``part`` from where it ends, or restart it from zero."""
    have = part.stat().st_size if part.exists() else 0
    if spec.size is not None and have > spec.size:
        part.unlink()  # longer than the archive can be: not a prefix of it
        have = 0
    if spec.size is not None and have == spec.size and have > 0:
        return  # complete from an earlier run; verification decides
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(spec.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:
            raise
        # Range not satisfiable: either we already have everything, or the part is stale.
        _, _, total = _parse_content_range(exc.headers.get("Content-Range"))
        exc.close()
        if total == have:
            return
        part.unlink()
        raise _Interrupted(f"server refused resuming at byte {have}; restarting") from None

    with response:
        length = response.headers.get("Content-Length")
        body_length = int(length) if length is not None and length.isdigit() else None
        if response.status == 206 and have:
            start, _, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _Interrupted(f"server resumed at byte {start}, not {have}; restarting")
            mode, offset = "ab", have
        elif response.status in (200, 206):
            if have:
                log.info(
                    "%s ignored the Range request; restarting %s from zero", spec.url, spec.name
                )
            mode, offset, total = "wb", 0, body_length
        else:
            raise DownloadError(f"unexpected HTTP {response.status} from {spec.url}")
        if spec.size is not None and total is not None and total != spec.size:
            raise ChecksumError(spec.url, "size", spec.size, total, archive=spec.name)

        received = 0
        with open(part, mode) as out, ByteProgress(total, spec.name, initial=offset) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if spec.size is not None and offset + received > spec.size:
                    more = f"more than {spec.size}"
                    raise ChecksumError(spec.url, "size", spec.size, more, archive=spec.name)
    # http.client returns b"" when the peer closes early, so compare with what was announced.
    if body_length is not None and received < body_length:
        raise _Interrupted(
            f"connection closed after {offset + received} of {offset + body_length} bytes"
        )


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 99, 100); ``bytes */100`` -> (None, None, 100)."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total != "*" else None,
    )
