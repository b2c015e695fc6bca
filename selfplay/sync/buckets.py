"""The wire format of a weight sync: full tensors packed into size-bounded safetensors buckets.

Why buckets: sending one parameter per message is the known bottleneck of weight sync (OpenRLHF
measured it above 40% of step time); one giant blob needs the whole model twice in memory. A bucket
is a plain ``safetensors`` byte string (Hugging Face checkpoint names, full unsharded tensors), so
every transport (Ray object store, a file, an NCCL broadcast of a byte tensor) carries the same thing
and every receiver loads it with the same code. A bucket carries its own checksum in its metadata and
the whole sync is summarised by a digest over the bucket checksums, which generators report back.

Choices (copies are the main cost of a sync, so each one is counted):

* Packing writes the safetensors layout itself: the header, then every tensor's bytes joined into one
  ``bytes`` object (exactly one copy of the data). Tensors are laid out by element size, largest
  first, then by name (as ``safetensors`` does), so every tensor starts at a multiple of its element
  size. The checksum is computed from the source tensors' memory, not from a copy.
* The checksum is BLAKE3 (the ``blake3`` package, one thread), recorded under the metadata key
  ``"blake3"``: it is several times faster than sha256 on one core (``bench/sync.py`` times both on each
  preset's weights), and a sync hashes every byte twice (learner and generator). Any accidental change
  is still detected (a 256-bit digest), and it is not a keyed MAC either way: the object store is
  trusted not to forge.
  Buckets recorded with ``"sha256"`` (written by earlier versions, e.g. a filesystem sync's directory)
  are still verified with sha256; a bucket with neither key is refused.
* A bucket may also travel *split*: a list of byte buffers whose concatenation is that layout, the
  header first and then one buffer per tensor (:func:`pack_bucket_parts`). The parts are the tensors'
  own memory, so a learner actor that returns them has Ray write every byte into the object store
  once (with its parallel copy) instead of joining them into a ``bytes`` first and then storing that
  (the join alone costs more than the store; ``bench/sync.py`` times both), and its memory never holds a
  second copy of the model. Readers read a split bucket exactly as the joined one.
* Unpacking accepts any byte buffer (``bytes``, ``bytearray``, ``memoryview``, a numpy ``uint8``
  array such as Ray's zero-copy read of the object store), or a split bucket of them, and returns
  ``torch.frombuffer`` views of it: no copy. The header is parsed and checked here (known dtypes,
  sizes that match shapes, tensors that tile the data region exactly, so a truncated or padded buffer
  is refused) and the views are hashed in place. The views share the caller's buffer, which may be
  read-only (Ray, ``bytes``): receivers must copy them into memory they own (``load_state_dict`` and
  vLLM's reload both do) and never write to them.
* What is hashed is unchanged from earlier versions (only the hash function is new): per tensor in
  name order, the name, ``str(dtype)``, ``str(tuple(shape))`` and the raw bytes. The sync digest is
  sha256 over the bucket checksums in order (a few hundred bytes; its function does not matter).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import blake3
import torch

T = TypeVar("T")

META_KEY = "selfplay"
MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces
CHECKSUM = "blake3"  # the metadata key (and hash) of the checksum new buckets carry
_HASHES = {"blake3": lambda: blake3.blake3(max_threads=1), "sha256": hashlib.sha256}  # checked in this order

# safetensors dtype names <-> torch dtypes (only those this torch has)
_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}
DTYPES: dict[str, torch.dtype] = {
    code: getattr(torch, name) for code, name in _DTYPE_NAMES.items() if hasattr(torch, name)
}
DTYPE_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}

# Anything with the buffer protocol: bytes, bytearray, memoryview, a numpy uint8 array, an mmap.
Buffer = Any


class BucketError(ValueError):
    """A bucket that is corrupt, truncated or from another sync."""


# ------------------------------------------------------------------------------------------ hashing
def _raw(t: torch.Tensor) -> Any:
    """A contiguous CPU tensor's bytes as a numpy ``uint8`` array sharing its memory (no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def _tensor_digest(tensors: Mapping[str, torch.Tensor], algorithm: str = CHECKSUM) -> str:
    """``algorithm`` (blake3 or sha256) over names, dtypes, shapes and bytes, in name order; tensors
    must be contiguous CPU."""
    h = _HASHES[algorithm]()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(_raw(t))  # both hashers read the buffer in place
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ packing
def _host(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a contiguous CPU tensor; the same tensor (no copy) when it already is one."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t if t.is_contiguous() else t.contiguous()


def _layout(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Order of the tensors in the data region: element size descending, then name (keeps alignment)."""
    return sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))


def _header(tensors: Mapping[str, torch.Tensor], order: list[str], meta: dict[str, Any]) -> bytes:
    """The length prefix and JSON header, padded with spaces so the data starts 8-byte aligned."""
    entries: dict[str, Any] = {"__metadata__": {META_KEY: json.dumps(meta)}}
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in DTYPE_CODES:
            raise BucketError(f"tensor {name!r} has dtype {t.dtype}, which a bucket cannot carry")
        nbytes = t.numel() * t.element_size()
        entries[name] = {
            "dtype": DTYPE_CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text


def pack_bucket_parts(tensors: Mapping[str, torch.Tensor], version: int, index: int) -> list[Any]:
    """One *split* bucket of contiguous CPU tensors: the header (``bytes``), then each tensor's bytes as a
    numpy ``uint8`` view of its own memory (no copy). The views are only as lasting as the tensors: hand
    the parts on (to Ray, to a file) before anything writes to those tensors."""
    meta = {"version": version, "index": index, CHECKSUM: _tensor_digest(tensors)}
    order = _layout(tensors)
    return [_header(tensors, order, meta), *(_raw(tensors[n]) for n in order if tensors[n].numel())]


def pack_bucket(tensors: Mapping[str, torch.Tensor], version: int, index: int) -> bytes:
    """One bucket of contiguous CPU tensors: header, then their bytes (one copy, into the result)."""
    return b"".join(pack_bucket_parts(tensors, version, index))


def pack_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_mb: float = 64.0, version: int = 0,
    split: bool = False,
) -> Iterator[Any]:
    """Group tensors into safetensors blobs of at most ``bucket_mb`` (a larger single tensor gets its own).

    Each blob's metadata holds ``{"version", "index", "blake3"}``; the hash covers names, dtypes, shapes
    and bytes of the tensors, so a flipped byte anywhere is detected by :func:`unpack_bucket`.
    ``split=True`` yields split buckets (:func:`pack_bucket_parts`: views of the tensors, no copy).
    """
    hosted = ((name, _host(tensor)) for name, tensor in named_tensors)
    groups = size_groups(hosted, lambda item: item[1].numel() * item[1].element_size(), bucket_mb)
    pack = pack_bucket_parts if split else pack_bucket
    for index, group in enumerate(groups):
        yield pack(dict(group), version, index)


def size_groups(items: Iterable[T], nbytes: Callable[[T], int], bucket_mb: float) -> Iterator[list[T]]:
    """Consecutive ``items`` in groups of at most ``bucket_mb`` by ``nbytes`` (an item larger than that
    gets a group of its own): the bucket boundaries of :func:`pack_buckets`, also used where the tensors
    must be gathered group by group before they can be packed (ZeRO-3 export)."""
    limit = int(bucket_mb * 1024 * 1024)
    group: list[T] = []
    size = 0
    for item in items:
        n = nbytes(item)
        if group and size + n > limit:
            yield group
            group, size = [], 0
        group.append(item)
        size += n
    if group:
        yield group


# ------------------------------------------------------------------------------------------ reading
def as_byte_view(blob: Buffer) -> memoryview:
    """A flat, read-only ``memoryview`` of unsigned bytes over ``blob`` (no copy)."""
    try:
        view = memoryview(blob)
    except TypeError:
        raise BucketError(f"a bucket must be a byte buffer, not {type(blob).__name__}") from None
    if view.ndim != 1 or view.format != "B":
        if not view.c_contiguous:
            raise BucketError("a bucket buffer must be contiguous")
        view = view.cast("B")
    return view.toreadonly()


def is_split(blob: Any) -> bool:
    """Whether ``blob`` is a split bucket (a list or tuple of byte buffers)."""
    return isinstance(blob, list | tuple)


def bucket_parts(blob: Any) -> list[memoryview]:
    """The byte views of a bucket's parts (no copy): one for a plain buffer, each part's for a split
    bucket; their concatenation is the bucket's safetensors layout."""
    if not is_split(blob):
        return [as_byte_view(blob)]
    if not blob:
        raise BucketError("a split bucket has no parts")
    return [as_byte_view(part) for part in blob]


def bucket_nbytes(blob: Any) -> int:
    """A bucket's size in bytes (a split bucket's: the sum of its parts)."""
    return sum(len(v) for v in bucket_parts(blob))


def joined(blob: Any) -> Any:
    """A split bucket joined into one ``bytes`` (a copy); any other buffer as it is."""
    return b"".join(bucket_parts(blob)) if is_split(blob) else blob


def _read_header(view: memoryview) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the offset where the data region starts (``view``: the first part)."""
    if len(view) < 8:
        raise BucketError(f"bucket of {len(view)} bytes is truncated")
    header_len = int.from_bytes(view[:8], "little")
    if header_len <= 0 or header_len > MAX_HEADER or 8 + header_len > len(view):
        raise BucketError("bucket header length is out of range (truncated or not safetensors)")
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]))
    except ValueError as exc:
        raise BucketError(f"bucket header is unreadable: {exc}") from None
    if not isinstance(header, dict):
        raise BucketError("bucket header is not a JSON object")
    return header, 8 + header_len


def _meta_of(header: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(header["__metadata__"][META_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise BucketError(f"bucket header is unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise BucketError("bucket metadata is not a JSON object")
    return meta


def bucket_meta(blob: Buffer) -> dict[str, Any]:
    """Read a bucket's metadata without loading its tensors."""
    header, _ = _read_header(bucket_parts(blob)[0])
    return _meta_of(header)


def _entry(name: str, spec: Any) -> tuple[torch.dtype, list[int], int, int]:
    """``(dtype, shape, begin, end)`` of one header entry, checked for consistency."""
    try:
        dtype = DTYPES[spec["dtype"]]
        shape = [int(d) for d in spec["shape"]]
        begin, end = (int(x) for x in spec["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BucketError(f"bucket entry {name!r} is malformed: {exc!r}") from None
    numel = 1
    for d in shape:
        if d < 0:
            raise BucketError(f"bucket entry {name!r} has a negative dimension {shape}")
        numel *= d
    if begin < 0 or end - begin != numel * dtype.itemsize:
        raise BucketError(f"bucket entry {name!r}: offsets {begin}..{end} do not hold {shape} {dtype}")
    return dtype, shape, begin, end


def _view(view: memoryview, dtype: torch.dtype, shape: list[int], start: int) -> torch.Tensor:
    """A tensor over ``view[start:]`` without a copy (a copy only if the address is misaligned)."""
    numel = 1
    for d in shape:
        numel *= d
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    t = torch.frombuffer(view, dtype=dtype, count=numel, offset=start).reshape(shape)
    return t if t.data_ptr() % dtype.itemsize == 0 else t.clone()


class _Stream:
    """The parts of a bucket as one byte stream: ``tensor(dtype, shape, begin, end)`` is a view into the
    part that holds bytes ``begin..end`` (a copy only for a range that crosses parts, which
    :func:`pack_bucket_parts` never writes)."""

    def __init__(self, parts: list[memoryview]):
        self.parts = parts
        self.starts = [0]
        for part in parts:
            self.starts.append(self.starts[-1] + len(part))

    def __len__(self) -> int:
        return self.starts[-1]

    def tensor(self, dtype: torch.dtype, shape: list[int], begin: int, end: int) -> torch.Tensor:
        if begin == end:
            return torch.empty(shape, dtype=dtype)
        i = bisect.bisect_right(self.starts, begin) - 1
        if end <= self.starts[i + 1]:
            return _view(self.parts[i], dtype, shape, begin - self.starts[i])
        pieces, position = [], begin
        while position < end:
            i = bisect.bisect_right(self.starts, position) - 1
            stop = min(end, self.starts[i + 1])
            pieces.append(self.parts[i][position - self.starts[i] : stop - self.starts[i]])
            position = stop
        return _view(memoryview(b"".join(pieces)), dtype, shape, 0)


def _tensors(stream: _Stream, header: dict[str, Any], start: int) -> dict[str, torch.Tensor]:
    """Check the header's entries against the buffer and return views (see :func:`bucket_tensors`)."""
    entries = {name: _entry(name, spec) for name, spec in header.items() if name != "__metadata__"}
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != position:
            raise BucketError(f"bucket entry {name!r} starts at {begin}, expected {position} (overlap or gap)")
        position = end
    if start + position != len(stream):
        raise BucketError(
            f"bucket data region is {len(stream) - start} bytes, its header describes {position} "
            "(truncated or padded)"
        )
    with warnings.catch_warnings():  # read-only buffers are intended: the views are only read
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        return {name: stream.tensor(dtype, shape, start + begin, start + end)
                for name, (dtype, shape, begin, end) in entries.items()}


def bucket_tensors(blob: Buffer) -> dict[str, torch.Tensor]:
    """The tensors of a bucket as views into ``blob`` (no copy, no hash check; see :func:`unpack_bucket`).

    The header is checked: every entry's dtype, shape and offsets agree, and the entries tile the data
    region exactly (a truncated or extended buffer is refused). The views must not be written to.
    """
    parts = bucket_parts(blob)
    header, start = _read_header(parts[0])
    return _tensors(_Stream(parts), header, start)


def open_bucket(blob: Buffer, expect_version: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A bucket's tensors (views into ``blob``) and metadata, its header checked but its hash NOT yet:
    call :func:`check_bucket` before using the tensors (:func:`unpack_bucket` does both)."""
    parts = bucket_parts(blob)
    header, start = _read_header(parts[0])
    meta = _meta_of(header)
    if expect_version is not None and meta.get("version") != expect_version:
        raise BucketError(f"bucket {meta.get('index')} is for version {meta.get('version')}, expected {expect_version}")
    try:
        tensors = _tensors(_Stream(parts), header, start)
    except BucketError as exc:
        raise BucketError(f"bucket {meta.get('index')} does not decode: {exc}") from None
    return tensors, meta


def checksum_of(meta: dict) -> tuple[str, str]:
    """``(algorithm, hex digest)`` a bucket's metadata records (blake3, or sha256 from earlier versions)."""
    for algorithm in _HASHES:
        value = meta.get(algorithm)
        if value is not None:
            if not isinstance(value, str):
                raise BucketError(f"bucket {meta.get('index')}: its {algorithm} checksum is not a string")
            return algorithm, value
    raise BucketError(f"bucket {meta.get('index')} carries no checksum (neither blake3 nor sha256 in its metadata)")


def check_bucket(tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    """Raise :class:`BucketError` unless the tensors hash to the bucket's recorded checksum. Safe to run on
    several threads at once (both hashers release the GIL while hashing)."""
    algorithm, expected = checksum_of(meta)
    got = _tensor_digest(tensors, algorithm)
    if got != expected:
        raise BucketError(f"bucket {meta.get('index')} checksum mismatch ({algorithm} {got[:12]}, recorded "
                          f"{expected[:12]}): data was corrupted in transit")


def unpack_bucket(blob: Buffer, expect_version: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Verify one bucket and return its tensors (views into ``blob``, no copy) and its metadata.

    Raises :class:`BucketError` on corruption (any flipped byte of the data, names, dtypes or shapes),
    truncation or a version mismatch.
    """
    tensors, meta = open_bucket(blob, expect_version)
    check_bucket(tensors, meta)
    return tensors, meta


def sync_digest(blobs: Iterable[Buffer]) -> str:
    """One checksum for a whole sync: sha256 over the bucket checksums in order."""
    h = hashlib.sha256()
    for blob in blobs:
        h.update(checksum_of(bucket_meta(blob))[1].encode())
    return h.hexdigest()
