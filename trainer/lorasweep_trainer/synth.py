"""A synthetic NTU-like dataset: AVI clips with NTU file names whose actions differ only by motion.

Every clip shows one bright square on a noisy dark background. The action id picks the square's path
(``MOTIONS[action % 8]``: right, left, up, down, diagonals, still), so telling classes apart needs the frames'
order and positions, not a colour or a texture; the start position, size, colour and the perpendicular offset
are random per clip. The square crosses most of the frame, which keeps the task easy for a tiny model.
Actions equal modulo 8 look alike (1 and 9 both move left): pick action ids that differ modulo 8.

Clip ``i`` of an action is named ``S{1 + i // 240}C{1 + i % 3}P{1 + (i // 6) % 40}R{1 + (i // 3) % 2}A{action}``.
Corrupt clips (for tests of the skip-and-count path) keep a valid name but hold bytes no decoder accepts;
corrupt clip ``j`` replaces the last clip of action ``actions[j % len(actions)]``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorasweep_trainer import storage
from lorasweep_trainer.data import NtuName

log = logging.getLogger(__name__)

# (dx, dy) of the square's path across the frame, as fractions of the free width/height.
MOTIONS: tuple[tuple[str, float, float], ...] = (
    ("right", 1.0, 0.0),
    ("left", -1.0, 0.0),
    ("up", 0.0, -1.0),
    ("down", 0.0, 1.0),
    ("down-right", 1.0, 1.0),
    ("up-left", -1.0, -1.0),
    ("still", 0.0, 0.0),
    ("up-right", 1.0, -1.0),
)
MAX_WIDTH, MAX_HEIGHT = 1920, 1080


@dataclass(frozen=True)
class SynthSpec:
    # NTU's sit down (8), stand up (9), hand waving (23) and two others, five distinct motions.
    actions: tuple[int, ...] = (8, 9, 23, 2, 3)
    clips_per_action: int = 10
    width: int = 64
    height: int = 48
    frames: int = 16
    fps: int = 30
    corrupt: int = 0
    seed: int = 0
    fourcc: str = "XVID"

    def __post_init__(self) -> None:
        if not (16 <= self.width <= MAX_WIDTH and 16 <= self.height <= MAX_HEIGHT):
            raise ValueError(
                f"clip size must be within 16x16 and {MAX_WIDTH}x{MAX_HEIGHT}, got {self.width}x{self.height}"
            )
        if self.width % 2 or self.height % 2:
            raise ValueError(f"clip width and height must be even for the codec, got {self.width}x{self.height}")
        if self.frames < 2:
            raise ValueError(f"frames must be at least 2, got {self.frames}")
        if not self.actions or any(not 1 <= action <= 120 for action in self.actions):
            raise ValueError(f"actions must be NTU action ids in 1..120, got {list(self.actions)}")
        if self.clips_per_action < 1:
            raise ValueError(f"clips per action must be at least 1, got {self.clips_per_action}")
        if not 0 <= self.corrupt <= len(self.actions) * self.clips_per_action:
            raise ValueError(f"corrupt must be between 0 and the number of clips, got {self.corrupt}")


def clip_name(action: int, index: int) -> NtuName:
    return NtuName(
        setup=1 + index // 240,
        camera=1 + index % 3,
        performer=1 + (index // 6) % 40,
        replication=1 + (index // 3) % 2,
        action=action,
    )


def motion_of(action: int) -> str:
    return MOTIONS[action % len(MOTIONS)][0]


def render_frames(action: int, width: int, height: int, frames: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The clip's frames (H, W, 3) uint8 BGR, one at a time (a 1080p clip does not fit comfortably at once)."""
    _name, dx, dy = MOTIONS[action % len(MOTIONS)]
    side = max(4, int(min(width, height) * rng.uniform(0.35, 0.5)))
    free_x, free_y = width - side, height - side
    # Start on the side the path leaves from; the other coordinate is random (the perpendicular offset).
    start_x = free_x * (0.0 if dx > 0 else 1.0 if dx < 0 else rng.uniform(0.2, 0.8))
    start_y = free_y * (0.0 if dy > 0 else 1.0 if dy < 0 else rng.uniform(0.2, 0.8))
    travel = rng.uniform(0.8, 1.0)
    colour = rng.integers(170, 256, size=3, dtype=np.uint8)
    background = rng.integers(0, 24, size=(height, width, 3), dtype=np.uint8)
    for t in range(frames):
        progress = travel * t / (frames - 1)
        x = int(round(start_x + dx * progress * free_x))
        y = int(round(start_y + dy * progress * free_y))
        frame = background.copy()
        frame[y : y + side, x : x + side] = colour
        yield frame


def encode_clip(action: int, spec: SynthSpec, rng: np.random.Generator) -> bytes:
    import cv2

    with tempfile.TemporaryDirectory(prefix="lorasweep-synth-") as tmp:
        path = Path(tmp) / "clip.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*spec.fourcc), spec.fps, (spec.width, spec.height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV cannot write AVI with fourcc {spec.fourcc!r}; try MJPG")
        try:
            for frame in render_frames(action, spec.width, spec.height, spec.frames, rng):
                writer.write(frame)
        finally:
            writer.release()
        return path.read_bytes()


def corrupt_bytes(rng: np.random.Generator, size: int = 4096) -> bytes:
    """A RIFF header followed by noise: looks like an AVI by name and magic, decodes as nothing."""
    return b"RIFF" + rng.bytes(size)


def corrupt_targets(spec: SynthSpec) -> set[tuple[int, int]]:
    counts = {action: 0 for action in spec.actions}
    for j in range(spec.corrupt):
        counts[spec.actions[j % len(spec.actions)]] += 1
    return {(action, spec.clips_per_action - 1 - k) for action, n in counts.items() for k in range(n)}


def write_dataset(spec: SynthSpec, destination: str) -> list[str]:
    """Write the dataset under ``destination`` (a folder or an ``s3://`` prefix); returns the clip URIs."""
    corrupt = corrupt_targets(spec)
    written = []
    for action in spec.actions:
        for index in range(spec.clips_per_action):
            # One generator per clip, seeded by (seed, action, index): a clip does not depend on the others.
            rng = np.random.default_rng([spec.seed, action, index])
            data = corrupt_bytes(rng) if (action, index) in corrupt else encode_clip(action, spec, rng)
            uri = storage.join(destination, clip_name(action, index).filename())
            storage.write_bytes(uri, data, content_type="video/x-msvideo")
            written.append(uri)
    log.info("synthetic dataset written destination=%s clips=%d corrupt=%d", destination, len(written), len(corrupt))
    return written
