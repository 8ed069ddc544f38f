"""keep_freed_memory: the model thread's activations reuse malloc's heap instead of being
faulted in from the kernel on every batch (real model, real page-fault counts)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import resource, sys, threading
import inference.model
from inference import keep_freed_memory
if sys.argv[1] == "keep":  # first thing, as `paychan serve` does: before any thread allocates
    assert keep_freed_memory()
else:
    inference.model.keep_freed_memory = lambda: False  # load_model applies it on the CPU
import torch
model = inference.model.load_model("tf_efficientnet_lite0", device="cpu")
batch = torch.zeros((8, 3, 224, 224)).contiguous(memory_format=torch.channels_last)
def work(out):  # the classifier's model thread: batches of 8, activations of up to ~40 MB
    for _ in range(6):
        model.top_k(batch, 5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        model.top_k(batch, 5)
    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
out = []
thread = threading.Thread(target=work, args=(out,))
thread.start()
thread.join()
print(out[0])
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="a glibc malloc setting")
def test_a_model_batch_reuses_freed_memory_instead_of_faulting_it_in() -> None:
    # glibc's defaults: every batch of 8 faulted ~28,000-45,000 pages in (110-180 MB)
    assert _page_faults("default") > 10_000
    assert _page_faults("keep") < 1_000
