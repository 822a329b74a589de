"""Philox4x32-10 blocks on the CPU in one compiled loop (numba), for :mod:`certframe.core.philox`.

The torch version (:func:`certframe.core.philox.philox4x32`) spends about 120 whole-tensor
operations per block of four words, which on a CPU is memory-bound (about 4x the cost of
``torch.randn``). The same rounds as one numba loop produce the identical words (integer
arithmetic on ``uint64``, no rounding anywhere) at about half of ``torch.randn``'s cost; the
conversion to uniforms is exact in both versions, so the two give bit-identical uniforms
(``tests/test_philox.py`` checks it). Single-threaded on purpose: numba's parallel threading
layers are not safe to call from several threads at once, and the sampler draws noise in a
helper thread.

:data:`AVAILABLE` is False where numba cannot be imported; :mod:`certframe.core.philox` then uses
the torch version (same values, slower).
"""
from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:     # pragma: no cover - numba is a dependency; torch remains the fallback
    numba = None

AVAILABLE = numba is not None

_U = np.uint64
_M0, _M1, _W0, _W1, _MASK = _U(0xD2511F53), _U(0xCD9E8D57), _U(0x9E3779B9), _U(0xBB67AE85), _U(0xFFFFFFFF)


def _uniform_blocks(draws, first, k0, k1, c3, shift, scale, out):
    """Fill ``out [B, 4, count]`` with the uniforms of blocks ``first ..`` of draws ``[B]`` (uint64).

    ``out[b, r, j]`` comes from word ``r`` of block ``first + j`` of draw ``draws[b]``.

    float32 ``out``: ``((w >> 9) + 1/2) * 2**-23``; float64 ``out``: ``(w + 1/2) * 2**-32``
    (both exact: ``shift`` 9 and ``scale`` 2**-23, or 0 and 2**-32). k0, k1, c3: uint64 words < 2**32.
    """
    for b in range(out.shape[0]):
        d = draws[b]
        for j in range(out.shape[2]):
            x0 = _U(first + j)
            x1 = d & _MASK
            x2 = d >> _U(32)
            x3 = c3
            ka = k0
            kb = k1
            for _ in range(10):
                p0 = _M0 * x0
                p1 = _M1 * x2
                x0, x1, x2, x3 = (p1 >> _U(32)) ^ x1 ^ ka, p1 & _MASK, (p0 >> _U(32)) ^ x3 ^ kb, p0 & _MASK
                ka = (ka + _W0) & _MASK
                kb = (kb + _W1) & _MASK
            out[b, 0, j] = ((x0 >> shift) + 0.5) * scale
            out[b, 1, j] = ((x1 >> shift) + 0.5) * scale
            out[b, 2, j] = ((x2 >> shift) + 0.5) * scale
            out[b, 3, j] = ((x3 >> shift) + 0.5) * scale


if AVAILABLE:
    _uniform_blocks = numba.njit(cache=True, nogil=True)(_uniform_blocks)


def uniform_blocks(draws: np.ndarray, first: int, key, out: np.ndarray) -> np.ndarray:
    """See :func:`_uniform_blocks`; ``key`` a :class:`certframe.core.philox.StreamKey`. Returns ``out``."""
    shift, scale = (9, 2.0 ** -23) if out.dtype == np.float32 else (0, 2.0 ** -32)
    _uniform_blocks(np.asarray(draws, dtype=np.uint64), _U(first), _U(key.k0), _U(key.k1), _U(key.c3), _U(shift),
                    scale, out)
    return out
