"""Test images made in code: encoders, a header-only PNG, a 16-bit greyscale copy, long thin
ramps; and ``measure``, the CPU and peak memory a block of code costs."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import resource
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

_PAGE = os.sysconf("SC_PAGE_SIZE")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT: a decompression-bomb probe."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def grey16(image: Image.Image) -> Image.Image:
    array = np.asarray(image.convert("L")).astype(np.uint16) * 257
    return Image.fromarray(array)


def ramp(width: int, height: int, fmt: str, **options: object) -> bytes:
    """A real ``width`` x ``height`` RGB image in ``fmt``: a diagonal gradient, so that a
    1x10000 JPEG is about 3 KB, as in the attack it reproduces.

        ramp(1, 10_000, "JPEG")        # 3,250 bytes
    """
    values = np.add.outer(np.arange(height), np.arange(width)) * 255 // max(1, width + height - 2)
    return encode(Image.fromarray(values.astype(np.uint8)).convert("RGB"), fmt, **options)


@dataclasses.dataclass(slots=True)
class Usage:
    """What a block cost this process: wall and CPU seconds, and RSS growth at its peak."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_growth_mb: float = 0.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def measure() -> Iterator[Usage]:
    """Measure the block, for the whole process (a gateway served in-process included).

        with measure() as used:
            check_image(body)
        assert used.rss_growth_mb < 50

    RSS is sampled from /proc/self/statm every half millisecond by a thread, and the
    lifetime peak (getrusage's ru_maxrss) is compared too: memory freed before the block
    ends (what a resize does) still counts at its peak.
    """
    used = Usage()
    start_rss, start_peak = _rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    highest = start_rss
    done = threading.Event()

    def sample() -> None:
        nonlocal highest
        while not done.wait(0.0005):
            highest = max(highest, _rss_bytes())

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    began_wall, began_cpu = time.perf_counter(), _cpu_s()
    try:
        yield used
    finally:
        used.wall_s = time.perf_counter() - began_wall
        used.cpu_s = _cpu_s() - began_cpu
        done.set()
        sampler.join()
        highest = max(highest, _rss_bytes())
        new_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_growth = max(0, new_peak - start_peak) * 1024  # ru_maxrss is in KiB on Linux
        used.rss_growth_mb = max(highest - start_rss, peak_growth) / 2**20
