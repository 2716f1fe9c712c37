"""The gpt-oss harmony encoding, loaded once and offline.

openai-harmony downloads `o200k_base.tiktoken` on first use, which fails without a network. The
`bpe-openai` package ships the identical file (gzipped), so we materialise it into a cache
directory once and point harmony at it through `TIKTOKEN_ENCODINGS_BASE`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from openai_harmony import HarmonyEncoding, HarmonyEncodingName, load_harmony_encoding

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
ENV_VAR = "TIKTOKEN_ENCODINGS_BASE"
VOCAB_SIZE = 201088
"""Token ids of the harmony gpt-oss encoding (o200k plus harmony's special and reserved ids)."""


class EncodingError(RuntimeError):
    """The harmony vocabulary could not be found or is corrupt."""


def cache_dir() -> Path:
    """Where the vocabulary is kept: `$HARMONY_AGENT_CACHE`, else the XDG cache dir."""
    if explicit := os.environ.get("HARMONY_AGENT_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "harmony-agent"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_is_valid(path: Path) -> bool:
    try:
        return _sha256(path.read_bytes()) == VOCAB_SHA256
    except OSError:
        return False


def _packaged_vocab() -> bytes:
    # Locate the data without importing bpe_openai: its import builds tokenizers (~0.4 s).
    spec = importlib.util.find_spec("bpe_openai")
    folders = spec.submodule_search_locations if spec else None
    try:
        if not folders:
            raise FileNotFoundError
        gz = (Path(next(iter(folders))) / "data" / (VOCAB_FILE + ".gz")).read_bytes()
    except FileNotFoundError as e:
        raise EncodingError(
            f"no harmony vocabulary found: the 'bpe-openai' package (which ships {VOCAB_FILE}) is "
            f"not installed; reinstall harmony-agent, or set {ENV_VAR} to a folder holding "
            f"{VOCAB_FILE}"
        ) from e
    data = gzip.decompress(gz)
    if _sha256(data) != VOCAB_SHA256:
        raise EncodingError(
            f"the {VOCAB_FILE} shipped by bpe-openai has sha256 {_sha256(data)}, expected "
            f"{VOCAB_SHA256}; reinstall bpe-openai, or set {ENV_VAR} to a folder holding the "
            f"right {VOCAB_FILE}"
        )
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def vocab_dir() -> Path:
    """A folder holding a verified `o200k_base.tiktoken`, materialised from bpe-openai if needed."""
    if explicit := os.environ.get(ENV_VAR):
        path = Path(explicit) / VOCAB_FILE
        if not path.is_file():
            raise EncodingError(f"{ENV_VAR}={explicit} but {path} does not exist")
        if not _file_is_valid(path):
            raise EncodingError(
                f"{path} is not the o200k_base vocabulary (sha256 mismatch): replace it, or unset "
                f"{ENV_VAR} to use the copy shipped with harmony-agent"
            )
        return Path(explicit)
    for folder in (cache_dir() / "encodings", Path(tempfile.gettempdir()) / "harmony-agent"):
        path = folder / VOCAB_FILE
        if _file_is_valid(path):
            return folder
        try:
            _write_atomically(path, _packaged_vocab())
            return folder
        except OSError:
            continue  # read-only home: fall back to the temp dir
    raise EncodingError(
        f"could not write {VOCAB_FILE} to {cache_dir() / 'encodings'} or the temp dir; set "
        f"HARMONY_AGENT_CACHE to a writable folder"
    )


@functools.cache
def harmony_encoding() -> HarmonyEncoding:
    """The gpt-oss harmony encoding (loaded once per process, never from the network)."""
    folder = vocab_dir()
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(folder)
    try:
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as e:  # harmony raises a bare HarmonyError for IO and hash problems
        raise EncodingError(f"could not load the harmony encoding from {folder}: {e}") from e
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous
