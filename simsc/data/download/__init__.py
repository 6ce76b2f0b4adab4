"""``simsc download <dataset> --root DIR``: fetch, verify and install a data set.

What it does, and what it leaves on disk (``DIR`` is the data root):

* Every file of the data set (see :mod:`simsc.data.sources`) is streamed to
  ``DIR/.downloads/<filename>.part`` (progress bar, chunked writes), then renamed to
  ``DIR/.downloads/<filename>`` once complete and verified. An interrupted download
  resumes with ``Range: bytes=<size of .part>-`` (a 206 reply is appended, a 200 reply
  restarts from zero). A file is complete only when proven: the size the server states, a
  known digest, a range request past the end (servers that send no ``Content-Length``) or,
  for an archive, a full integrity read; otherwise nothing is installed or recorded.
  Connection errors, timeouts, 5xx/408/429 replies and a stream cut
  short of its ``Content-Length`` are retried with exponential backoff, each retry
  resuming from the current ``.part`` size; an attempt that received bytes does not
  count against the retry budget.
* SHA-256: ``DIR/simsc-download.lock.json`` maps ``filename -> {url, sha256, size}``.
  A digest known in ``sources.py`` or recorded in the lock file must match, or the file
  is deleted and a :class:`ChecksumError` names the file and both digests. Otherwise the
  digest is recorded (trust on first use) once the data set is installed.
* The data set folder ``DIR/<folder>`` is built in ``DIR/.tmp-extract-XXXX`` (archives
  extracted with member checks: no absolute paths, no ``..``, no links or devices, at most
  the data set's known size (``Dataset.max_bytes``) and the free disk space; pair lists
  copied), a completion marker ``.simsc-complete.json`` is written into it, and the
  folder is moved into place with one ``os.replace``: it either exists complete or not at
  all. The downloads are then deleted (``keep_archives=True`` keeps them).
* A second run finds the marker and does no network work.
* After a failure: no data set folder and no temporary folder. ``DIR/.downloads/`` keeps
  only what a rerun can use (completed downloads that passed their checks, ``.part``
  files of interrupted downloads); a file that failed its checksum or whose archive
  could not be extracted is deleted; an empty ``.downloads`` is removed. The lock file is
  only written once a data set installs (it also keeps the entries of earlier installs).
* Without network: a file placed by hand at ``DIR/.downloads/<filename>`` is used as is
  (verified against the lock file, or recorded in it).

Modules: :mod:`.common` (errors, constants, digests, lock file), :mod:`.http_fetch` (resumable
HTTP fetch with retries), :mod:`.archives` (safe extraction), :mod:`.install` (a data set's
files -> an installed folder); the command line is :mod:`simsc.commands.download`.
"""

from ..._lazy import lazy_attributes

# submodule -> the names it defines, each imported on first use (PEP 562): ``simsc download
# --help`` needs only the constants of .common, not HTTP, TLS and archive modules.
_LAZY = {
    "common": (
        "CHUNK",
        "DEFAULT_BACKOFF",
        "DEFAULT_RETRIES",
        "DEFAULT_TIMEOUT",
        "DOWNLOADS_DIR",
        "LOCK_NAME",
        "MARKER_NAME",
        "MAX_DELAY",
        "TMP_PREFIX",
        "USER_AGENT",
        "ChecksumError",
        "DownloadError",
        "UnsafeArchiveError",
        "read_lock",
        "sha256_file",
    ),
    "http_fetch": ("FetchResult", "fetch"),
    "archives": ("check_archive", "extract_archive"),
    "install": ("download_dataset",),
}

__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY, globals())
