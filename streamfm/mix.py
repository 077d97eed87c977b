"""splitmix64: the one integer mixer behind every pseudo-random draw.

Steele, Lea and Flood's SplitMix64 (``java.util.SplittableRandom``): a
state advanced by the golden-ratio increment and passed through a bijective
finaliser. The initial factors of a feature (``ftrl.init_key``), recall's
negative sampling (``recall.sampling``) and fm_sample's down-sampling
(``sample.rank``) all draw from it, so a value drawn anywhere is reproducible
from the seed alone.

>>> hex(mix64_py(1))
'0x5692161d100b05e5'
>>> int(mix64(np.uint64(1))) == mix64_py(1)
True
"""

import numpy as np
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / phi: the state's increment
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_MASK = 0xFFFFFFFFFFFFFFFF
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53


@njit(inline="always")
def mix64(z):
    """SplitMix64's finaliser of a uint64 ``z`` (a bijection of 64-bit words)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(inline="always")
def splitmix64(x):
    """The draw of the state after ``x``: mix64(x + GOLDEN)."""
    return mix64(x + GOLDEN)


@njit(inline="always")
def unit(z):
    """A double in [0, 1) from a mixed word: its top 53 bits."""
    return np.float64(z >> _S11) * _TO_UNIT


def mix64_py(z):
    """mix64 in plain Python integers (setting up states outside kernels)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)
