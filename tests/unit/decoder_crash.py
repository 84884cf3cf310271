"""A decoder worker that dies like a segfaulting libavcodec on one marked clip (for test_trainer_decode_pool).

It lives in a module of its own because the pool pickles its worker function by name into spawned processes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import numpy as np

from lorasweep_trainer.decode import FrameRequest, _worker_decode

CRASH = b"crash the decoder"


def crash_on_marker(
    data: bytes, requests: Sequence[FrameRequest], frames_per_clip: int, short_side: int | None
) -> list[np.ndarray] | str:
    if data.startswith(CRASH):
        os.kill(os.getpid(), signal.SIGSEGV)
    return _worker_decode(data, requests, frames_per_clip, short_side)
