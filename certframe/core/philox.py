"""One counter-based random stream for every device: Philox4x32-10 and Box-Muller in torch operations.

Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC 2011) maps a 128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)`` to four
32-bit words through ten rounds of

    hi0, lo0 = mulhilo(0xD2511F53, c0);  hi1, lo1 = mulhilo(0xCD9E8D57, c2)
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);  k += (0x9E3779B9, 0xBB67AE85)

(the key is bumped between rounds). It is a bijection of the counter for each key, so
distinct counters never give the same block. :func:`philox4x32` is written in plain torch
integer operations on int64 tensors holding unsigned 32-bit values, so the SAME words come
out on CPU and CUDA, vectorised over any number of counters; ``tests/test_philox.py`` pins it
to Random123's published known-answer vectors (``kat_vectors``).

A **stream** is the key of one identity (for noise: seed, image id, phase), hashed with
``blake2b`` to 96 bits: 64 bits become the Philox key, 32 bits the counter word ``c3``
(:func:`stream_key`). Draw ``i`` of a stream reads blocks ``j = 0, 1, ...`` at counter
``(j, i mod 2**32, i // 2**32, c3)`` (``0 <= i < 2**63``): every draw has its own counter range
(up to ``2**32`` blocks, 2**34 values), so no two draws of one stream share a block, and the
values of a draw do not depend on how draws are batched, on the device, or on the process. A
draw of ``M`` values reads ``J = ceil(M / 4)`` blocks; value ``m`` comes from word ``m // J`` of
block ``m mod J`` (planar, so that every operation after Philox reads contiguous memory).

**Normals** (:func:`normal`): each block gives two pairs ``(w0, w1)``, ``(w2, w3)``; Box-Muller
(Box and Muller 1958) turns a pair into two independent standard normals
``z = sqrt(-2 ln u) * (cos 2 pi v, sin 2 pi v)``. float32: ``u, v = (w >> 9 + 1/2) 2**-23``
(exact in float32; ``|z| <= 5.77``, a tail of probability 8e-9 cut off); float64:
``(w + 1/2) 2**-32`` (``|z| <= 6.66``). The words are bit-identical on every device; the normals
go through the device's ``log``, ``sqrt``, ``cos`` and ``sin`` and so agree to rounding
(a few float32 ulps) between CPU and CUDA.

On CPU the blocks come from one compiled loop (:mod:`certframe.core.philox_cpu`, numba; the same
words, about half the cost of ``torch.randn`` where the torch operations cost four times it),
else in chunks of torch operations that stay in cache (:data:`CPU_CHUNK_BLOCKS`); on CUDA from
torch operations in one pass per call. No host synchronisation: nothing reads a tensor's value.

:data:`STREAM_VERSION` names this construction; run manifests record it, and a run made
with another stream is not resumed.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from certframe.core import philox_cpu

STREAM_VERSION = "philox4x32-10/box-muller/1"
"""The noise stream's name and version, recorded in run manifests (change it when any value changes)."""

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
ROUNDS = 10
CPU_CHUNK_BLOCKS = 1 << 15
"""Blocks per chunk on CPU (32768 blocks = 131072 values): the temporaries stay in the L2 cache."""


@dataclass(frozen=True)
class StreamKey:
    """The key of one stream: Philox key words ``k0, k1`` and the fixed counter word ``c3`` (each < 2**32)."""

    k0: int
    k1: int
    c3: int


def stream_key(*identity) -> StreamKey:
    """The stream of an identity (JSON-encodable parts, e.g. ``(seed, image_id, phase)``).

    ``blake2b`` (12 bytes) of the JSON list of the parts: an injective encoding, so no
    choice of image id can mimic another identity; two identities share a stream with
    probability ``2**-96``.
    """
    digest = hashlib.blake2b(json.dumps(list(identity), ensure_ascii=False).encode(), digest_size=12).digest()
    k0, k1, c3 = (int.from_bytes(digest[i:i + 4], "little") for i in (0, 4, 8))
    return StreamKey(k0, k1, c3)


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int,
               rounds: int = ROUNDS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-``rounds`` of counters ``(c0, c1, c2, c3)`` under key ``(k0, k1)``.

    c0..c3: int64 tensors (broadcastable to one shape, on one device) holding unsigned 32-bit
    values. k0, k1: Python ints < 2**32. Returns the four output words, int64 in ``[0, 2**32)``,
    of the broadcast shape.

    The two multiplications of a round run as one, on the pair ``A = (c0, c2)`` against
    ``(M0, M1)``, beside ``B = (c3, c1)``: a round is then ``P = A * M``, ``hi = P >> 32``,
    ``lo = P & mask``, ``A' = flip(hi ^ B ^ (k1, k0))``, ``B' = lo``: seven tensor operations
    instead of twelve kernel launches, which on a GPU (small tensors: launches are most of the
    cost) is about a third fewer per call. The products are computed in int64, which wraps modulo 2**64 on every torch
    device (two's complement); the masks recover the unsigned words (the all-ones
    known-answer vector exercises the wrap).
    """
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape)
    device = c0.device
    a = torch.stack([c0.expand(shape), c2.expand(shape)])                       # (c0, c2)
    b = torch.stack([c3.expand(shape), c1.expand(shape)])                       # (c3, c1)
    view = (2,) + (1,) * len(shape)
    # constants made on the device from Python scalars (a host-to-device copy would wait for the stream)
    multipliers = (torch.arange(2, dtype=torch.int64, device=device) * (M1 - M0) + M0).view(view)   # (M0, M1)
    steps = torch.arange(rounds, dtype=torch.int64, device=device)
    keys = torch.stack([(steps * W1 + k1) & MASK32, (steps * W0 + k0) & MASK32], dim=1).view(rounds, *view)
    for r in range(rounds):
        p = a * multipliers                                                  # (p0, p1)
        x = ((p >> 32) & MASK32).bitwise_xor_(b).bitwise_xor_(keys[r])     # (c2', c0'); keys[r] = (k1r, k0r)
        b = p.bitwise_and_(MASK32)                                           # (lo0, lo1) = (c3', c1')
        a = x.flip(0)                                                        # (c0', c2')
    return a[0], b[1], a[1], b[0]


def _counter_words(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``c1, c2`` of draws ``[B]`` (int64 draw indices < 2**63), as ``[B, 1]`` columns."""
    draws = draws.reshape(-1, 1)
    return draws & MASK32, draws >> 32


def _check_draws(start: int, count: int) -> None:
    if start < 0 or count < 0 or start + count > 2 ** 63:   # int64 draw indices on every device
        raise ValueError(f"draw indices must lie in [0, 2**63), got {start}..{start + count - 1}")


def _draw_indices(start: int, count: int, device: torch.device) -> torch.Tensor:
    _check_draws(start, count)
    return torch.arange(count, dtype=torch.int64, device=device).add_(start)   # arange would overflow at 2**63


def blocks(key: StreamKey, draws: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Words ``[B, count, 4]`` (int64 in ``[0, 2**32)``) of blocks ``first .. first+count-1`` of each draw.

    draws: int64 ``[B]`` draw indices on the device the words are made on.
    """
    if first < 0 or first + count > 2 ** 32:
        raise ValueError(f"a draw has at most 2**32 blocks, asked for blocks {first}..{first + count - 1}")
    c1, c2 = _counter_words(draws)
    c0 = torch.arange(first, first + count, dtype=torch.int64, device=draws.device).reshape(1, -1)
    c3 = torch.full((1, 1), key.c3, dtype=torch.int64, device=draws.device)
    shape = (len(draws), count)
    return torch.stack([w.expand(shape) for w in philox4x32(c0, c1, c2, c3, key.k0, key.k1)], dim=-1)


def _tiles(count: int, num_blocks: int, device: torch.device) -> list[tuple[int, int, int, int]]:
    """``(row, rows, first, blocks)`` tiles of a ``[count draws, num_blocks]`` request.

    CPU: about :data:`CPU_CHUNK_BLOCKS` blocks per tile, so that the temporaries stay in cache
    (whole-tensor operations on a CPU are bound by memory, not arithmetic); CUDA: one tile.
    """
    if device.type != "cpu":
        return [(0, count, 0, num_blocks)]
    span = min(num_blocks, CPU_CHUNK_BLOCKS) or 1
    rows = max(1, CPU_CHUNK_BLOCKS // span)
    return [(r, min(rows, count - r), j, min(span, num_blocks - j))
            for r in range(0, count, rows) for j in range(0, num_blocks, span)]


def _to_uniform(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Words -> uniforms in (0, 1), exactly: float64 ``(w + 1/2) 2**-32``, float32 ``((w >> 9) + 1/2) 2**-23``."""
    if dtype == torch.float64:
        return (w.to(torch.float64) + 0.5) * 2.0 ** -32
    return ((w >> 9).to(torch.float32) + 0.5) * 2.0 ** -23


def uniform_blocks(key: StreamKey, start: int, count: int, first: int, num_blocks: int, *,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniforms in (0, 1) ``[count, 4, num_blocks]`` of draws ``start ..``, blocks ``first ..``.

    ``[i, r, j]`` is :func:`_to_uniform` of word ``r`` of block ``first + j`` of draw
    ``start + i`` (planar, so that Box-Muller reads and writes contiguous rows). On CPU the
    compiled loop of :mod:`certframe.core.philox_cpu` makes them (bit-identical, faster) when numba
    is installed. dtype: float32 or float64.
    """
    device = torch.device(device)
    if first < 0 or first + num_blocks > 2 ** 32:
        raise ValueError(f"a draw has at most 2**32 blocks (2**34 values), asked for blocks "
                         f"{first}..{first + num_blocks - 1}")
    if device.type == "cpu" and philox_cpu.AVAILABLE:
        _check_draws(start, count)
        draws = np.arange(count, dtype=np.uint64) + np.uint64(start)
        out = np.empty((count, 4, num_blocks), dtype=np.float64 if dtype == torch.float64 else np.float32)
        return torch.from_numpy(philox_cpu.uniform_blocks(draws, first, key, out))
    return _to_uniform(blocks(key, _draw_indices(start, count, device), first, num_blocks), dtype).transpose(1, 2)


def box_muller(u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normals ``[B, 4, J]`` from planar uniforms ``[B, 4, J]`` in (0, 1) (Box and Muller 1958).

    Planes ``(0, 1)`` and ``(2, 3)`` are the pairs ``(u, v)``; each gives the planes
    ``sqrt(-2 ln u) cos 2 pi v`` and ``sqrt(-2 ln u) sin 2 pi v``. ``out``: where to write
    (same shape and dtype as ``u``), else a new tensor.
    """
    out = torch.empty_like(u, memory_format=torch.contiguous_format) if out is None else out
    pairs, z = u.unflatten(1, (2, 2)), out.unflatten(1, (2, 2))       # [B, pair, (u, v), J]
    radius = torch.log(pairs[:, :, 0]).mul_(-2.0).sqrt_()
    angle = pairs[:, :, 1] * (2.0 * math.pi)
    torch.cos(angle, out=z[:, :, 0])
    torch.sin(angle, out=z[:, :, 1])
    z.mul_(radius.unsqueeze(2))
    return out


def normal(key: StreamKey, start: int, count: int, numel: int, *, device: str | torch.device = "cpu",
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals ``[count, numel]`` of draws ``start .. start+count-1`` of the stream ``key``.

    dtype: float64, or float32 (also used, then cast, for float16 / bfloat16).
    """
    device = torch.device(device)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    num_blocks = -(-numel // 4)
    out = torch.empty((count, 4, num_blocks), dtype=work, device=device)
    for row, rows, first, size in _tiles(count, num_blocks, device):
        box_muller(uniform_blocks(key, start + row, rows, first, size, device=device, dtype=work),
                   out=out[row:row + rows, :, first:first + size])
    # value m of a draw = plane m // J, block m % J (J = num_blocks): the planes' values in order
    flat = out.view(count, 4 * num_blocks)
    return (flat if numel == 4 * num_blocks else flat[:, :numel]).to(dtype)


def words(key: StreamKey, start: int, count: int, numel: int, *,
          device: str | torch.device = "cpu") -> torch.Tensor:
    """Raw 32-bit words ``[count, numel]`` (int64 in ``[0, 2**32)``) of draws ``start .. start+count-1``.

    Value ``m`` is word ``m // J`` of block ``m mod J``, ``J = ceil(numel / 4)`` (as :func:`normal`).
    """
    device = torch.device(device)
    draws = _draw_indices(start, count, device)
    num_blocks = -(-numel // 4)
    out = torch.empty((count, 4, num_blocks), dtype=torch.int64, device=device)
    for row, rows, first, size in _tiles(count, num_blocks, device):
        out[row:row + rows, :, first:first + size] = blocks(key, draws[row:row + rows], first, size).transpose(1, 2)
    return out.view(count, 4 * num_blocks)[:, :numel]


def uniform(key: StreamKey, start: int, count: int, numel: int, *, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniforms in ``[0, 1)`` ``[count, numel]``: word ``w`` becomes ``(w >> 8) 2**-24`` (exact in float32)."""
    return (words(key, start, count, numel, device=device) >> 8).to(dtype).mul_(2.0 ** -24)


def integers(key: StreamKey, start: int, count: int, numel: int, high: int, *,
             device: str | torch.device = "cpu") -> torch.Tensor:
    """Integers in ``[0, high)`` ``[count, numel]`` (int64): ``(w * high) >> 32`` (Lemire's multiply-shift).

    Exact integer arithmetic on every device; the bias is at most ``high / 2**32`` per value.
    """
    if not 0 < high < 2 ** 31:
        raise ValueError(f"high must lie in [1, 2**31), got {high}")
    return (words(key, start, count, numel, device=device) * high) >> 32


def permutation(key: StreamKey, index: int, n: int, *, device: str | torch.device = "cpu") -> torch.Tensor:
    """A uniform random permutation of ``0..n-1`` (int64 ``[n]``): draw ``index``'s words, stable argsort.

    Stable sorting makes ties (probability about ``n**2 / 2**33``) resolve the same way on
    every device.
    """
    return torch.argsort(words(key, index, 1, n, device=device)[0], stable=True)
