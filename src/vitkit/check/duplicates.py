"""Exact duplicates (equal bytes) and near duplicates (the same picture re-encoded, resized or lightly
edited), within a class, across classes (conflicting labels) and across splits (leaks).

A near duplicate is found in two steps: a 64-bit DCT perceptual hash (pHash: the signs of the 8x8
lowest frequencies of the 32x32 grey image against their median) within NEAR_BITS bits proposes pairs,
which stand only when their 16x16 grey thumbnails agree closely (correlation and mean difference): the
hash is robust to re-encoding and resizing, the thumbnails keep flat or similar-looking images apart.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from PIL import Image

HASH_SIDE = 32
NEAR_BITS = 18  # of 64: candidate pairs (the thumbnails then decide)
MIN_CORRELATION = 0.93  # of the thumbnails' pixels
MAX_MEAN_DIFFERENCE = 14.0  # of 255, per thumbnail pixel
SIGNATURE_SIDE = 16


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    matrix = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(HASH_SIDE)


def perceptual_hash(image: Image.Image) -> int:
    grey = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def thumbnail_signature(image: Image.Image) -> np.ndarray:
    side = SIGNATURE_SIDE
    return np.asarray(image.convert("L").resize((side, side), Image.Resampling.BOX), np.uint8).flatten()


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    bytes_ = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(bytes_, axis=-1).sum(-1)


def near_pairs(hashes: np.ndarray, signatures: np.ndarray, chunk: int = 256) -> list[tuple[int, int, int, float]]:
    """(i, j, hash distance, thumbnail correlation) for i < j whose hashes are within NEAR_BITS bits and
    whose thumbnails agree. `hashes`: (N,) uint64; `signatures`: (N, 256) uint8."""
    found = []
    sig = signatures.astype(np.float32)
    centred = sig - sig.mean(1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk]
        distance = _popcount(block[:, None] ^ hashes[None, :])
        rows, cols = np.nonzero(distance <= NEAR_BITS)
        rows = rows + start
        keep = cols > rows
        rows, cols = rows[keep], cols[keep]
        if not len(rows):
            continue
        difference = np.abs(sig[rows] - sig[cols]).mean(1)
        denominator = norms[rows] * norms[cols]
        flat = denominator < 1e-6  # both nearly uniform: the mean difference alone decides
        correlation = np.where(flat, 1.0, (centred[rows] * centred[cols]).sum(1) / np.maximum(denominator, 1e-6))
        good = (correlation >= MIN_CORRELATION) & (difference <= MAX_MEAN_DIFFERENCE)
        for i, j, c in zip(rows[good], cols[good], correlation[good]):
            found.append((int(i), int(j), int(distance[i - start, j]), float(c)))
    return found


def pair_kind(split_a: str, split_b: str, label_a, label_b) -> str:
    """leak (across splits, the worst: the evaluation sees training images), conflict (one picture, two
    labels), or duplicate (same split and label: weighs the picture twice)."""
    if split_a != split_b:
        return "leak"
    if label_a != label_b:
        return "conflict"
    return "duplicate"


def exact_groups(digests: list[str]) -> list[list[int]]:
    """Indices sharing a digest (empty digests, of unreadable files, ignored), groups of two or more."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        if digest:
            by_digest[digest].append(i)
    return [group for group in by_digest.values() if len(group) > 1]
