"""Duplicates and near-duplicates within and across splits, and the groups they make.

Three kinds of pair, each with a similarity in [0, 1]:

- `identical`: the same bytes (SHA-256 of the file), similarity 1;
- `audio`: fingerprints (see `harness.audit.probe`) agreeing in at least `audio_threshold` of their
  bits (0.8 by default: re-encoded copies measured 0.85-0.98, different clips at most 0.60);
- `faces`: face-crop hashes (see `harness.audit.faces`) agreeing in at least `faces_threshold`
  (0.92: on the demo's 96-pixel faces, different clips agreed in at most 0.87 of the bits, while
  copies re-encoded at CRF 35 agreed in 0.79-0.95, the detector finding the face in one copy and
  falling back to the centre in the other; so only close visual copies are caught this way).

A pair found as identical is not listed again under another kind; a pair found by both audio and
faces is listed under each. Bits are compared all against all as a matrix product of +-1 vectors,
in blocks of rows, so memory stays at a block times N: 10,000 clips with 512-bit fingerprints take
about 5e10 multiply-adds (seconds with BLAS).

`groups` joins clips linked by any pair (union-find): the near-duplicate clusters that grouped
cross-validation keeps within one fold.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

IDENTICAL, AUDIO, FACES = "identical", "audio", "faces"
_BLOCK_CELLS = 1 << 25  # similarities per block of the product: 128 MB of float32 whatever N


@dataclass(frozen=True)
class Pair:
    a: str  # split/name, the first in table order
    b: str
    kind: str  # identical | audio | faces
    similarity: float

    @property
    def across_splits(self) -> bool:
        return self.a.split("/", 1)[0] != self.b.split("/", 1)[0]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def identical_pairs(keys: Sequence[str], digests: Sequence[str | None]) -> list[Pair]:
    """Every pair of clips with the same content digest (clips without one are skipped)."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        if digest:
            by_digest[digest].append(i)
    return [Pair(keys[i], keys[j], IDENTICAL, 1.0)
            for members in by_digest.values() for x, i in enumerate(members) for j in members[x + 1 :]]


def similar_pairs(keys: Sequence[str], packed: np.ndarray, valid: np.ndarray, threshold: float, kind: str) -> list[Pair]:
    """Pairs whose packed bit vectors agree in at least `threshold` of their bits.

    Args:
        keys: clip names (`split/name`), one per row of `packed`.
        packed: (N, bytes) uint8, np.packbits of each clip's bits.
        valid: (N,) bool, rows that hold a real vector (others are never paired).
        threshold: the least share of equal bits for a pair.
        kind: the pair kind to record.
    """
    index = np.flatnonzero(valid)
    if len(index) < 2 or packed.shape[1] == 0:
        return []
    signs = np.unpackbits(packed[index], axis=1).astype(np.float32) * 2 - 1  # bit 1 -> +1, 0 -> -1
    bits = signs.shape[1]
    least = (2 * threshold - 1) * bits - 1e-3  # agree - disagree = dot product; agree share = (dot/bits + 1) / 2
    pairs = []
    block = max(1, _BLOCK_CELLS // len(index))
    for start in range(0, len(index), block):
        dots = signs[start : start + block] @ signs.T
        rows, cols = np.nonzero(dots >= least)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if c > i:
                similarity = (float(dots[r, c]) / bits + 1) / 2
                pairs.append(Pair(keys[index[i]], keys[index[c]], kind, round(similarity, 4)))
    return pairs


def find_duplicates(
    keys: Sequence[str],
    digests: Sequence[str | None],
    fingerprints: np.ndarray,
    has_fingerprint: np.ndarray,
    face_hashes: np.ndarray,
    has_face_hash: np.ndarray,
    *,
    audio_threshold: float = 0.8,
    faces_threshold: float = 0.92,
) -> list[Pair]:
    """Identical files, then audio and face near-duplicates that are not identical; across-split
    pairs first, then by similarity (highest first)."""
    same = identical_pairs(keys, digests)
    known = {(p.a, p.b) for p in same}
    near = similar_pairs(keys, fingerprints, has_fingerprint, audio_threshold, AUDIO)
    near += similar_pairs(keys, face_hashes, has_face_hash, faces_threshold, FACES)
    pairs = same + [p for p in near if (p.a, p.b) not in known]
    return sorted(pairs, key=lambda p: (not p.across_splits, -p.similarity, p.a, p.b, p.kind))


def groups(pairs: Iterable[Pair], keys: Iterable[str]) -> dict[str, int]:
    """Each clip's near-duplicate group: clips linked by any pair share a group, others are alone.

    Args:
        pairs: duplicate pairs (any kind), e.g. `AuditResult.duplicates`.
        keys: every clip to place (`split/name`), in a fixed order.

    Returns:
        `{clip: group id}`; a group's id is the position (in `keys`) of its first member, so the
        ids are stable for the same clips and pairs.

    Example:
        >>> groups([Pair("train/a", "val/c", "audio", 0.9)], ["train/a", "train/b", "val/c"])
        {'train/a': 0, 'train/b': 1, 'val/c': 0}
    """
    order = list(keys)
    position = {k: i for i, k in enumerate(order)}
    parent = {k: k for k in order}

    def root(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]  # path halving keeps the trees flat
            k = parent[k]
        return k

    for p in pairs:
        if p.a in parent and p.b in parent:
            ra, rb = root(p.a), root(p.b)
            if ra != rb:
                first, second = sorted((ra, rb), key=position.__getitem__)
                parent[second] = first  # the root is always the earliest member
    return {k: position[root(k)] for k in order}
