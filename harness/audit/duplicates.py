"""Duplicates and near-duplicates within and across splits, and the groups they make.

Pairs, each with a similarity in [0, 1]: `identical` (same SHA-256), 1; `audio`, fingerprints agreeing in
`audio_threshold` of their bits (0.8: re-encoded copies 0.85-0.98, different clips at most 0.60); `faces`,
crop hashes agreeing in `faces_threshold` (0.92: different demo clips at most 0.87, CRF 35 copies
0.79-0.95, so only close visual copies). An identical pair is not listed again; one found by audio and
faces is listed under each. Bits are compared all against all as blocked +-1 products (10,000 clips:
seconds). `groups` joins linked clips (union-find): what grouped cross-validation keeps together.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations

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
    return [Pair(keys[i], keys[j], IDENTICAL, 1.0) for members in by_digest.values() for i, j in combinations(members, 2)]


def similar_pairs(keys: Sequence[str], packed: np.ndarray, valid: np.ndarray, threshold: float, kind: str) -> list[Pair]:
    """Pairs of `kind` whose `valid` rows of `packed` (np.packbits, a row per key) agree in `threshold` of their bits."""
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
        pairs += [Pair(keys[index[start + r]], keys[index[c]], kind, round((float(dots[r, c]) / bits + 1) / 2, 4))
                  for r, c in zip(rows.tolist(), cols.tolist()) if c > start + r]
    return pairs


def find_duplicates(keys: Sequence[str], digests: Sequence[str | None], fingerprints: np.ndarray,
                    has_fingerprint: np.ndarray, face_hashes: np.ndarray, has_face_hash: np.ndarray, *,
                    audio_threshold: float = 0.8, faces_threshold: float = 0.92) -> list[Pair]:
    """Identical pairs, then the other near-duplicates; across splits first, then by similarity (highest first)."""
    same = identical_pairs(keys, digests)
    known = {(p.a, p.b) for p in same}
    near = similar_pairs(keys, fingerprints, has_fingerprint, audio_threshold, AUDIO)
    near += similar_pairs(keys, face_hashes, has_face_hash, faces_threshold, FACES)
    pairs = same + [p for p in near if (p.a, p.b) not in known]
    return sorted(pairs, key=lambda p: (not p.across_splits, -p.similarity, p.a, p.b, p.kind))


def groups(pairs: Iterable[Pair], keys: Iterable[str]) -> dict[str, int]:
    """Each clip of `keys` -> its group, shared by clips linked by any pair; the id is the position of the
    group's first member in `keys` (stable): a~c in [a, b, c] gives {a: 0, b: 1, c: 0}."""
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
