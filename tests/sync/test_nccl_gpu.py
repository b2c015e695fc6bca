"""GPU tier: the broadcast sync's protocol over real NCCL (one process per GPU, no Ray or vLLM needed).

Needs at least two CUDA devices: NCCL refuses two ranks on one GPU. Not run in this project's CPU CI;
see docs/gpu.md. The same protocol runs on gloo in test_sync_units.py and test_sync_pool.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

pytestmark = pytest.mark.gpu


def _rank(rank: int, world: int, port: int, blobs: list[bytes], results) -> None:
    import torch

    from selfplay.sync.nccl import BroadcastEndpoint

    torch.cuda.set_device(rank)
    ep = BroadcastEndpoint("127.0.0.1", port, world, rank, "nccl", timeout_s=60)
    if rank == 0:
        ep.send(blobs)
        results[rank] = None
    else:
        results[rank] = ep.receive()


def test_nccl_broadcast_delivers_every_bucket_byte_for_byte():
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL broadcast needs one GPU per rank (>= 2 GPUs)")
    import torch.multiprocessing as mp

    from selfplay.sync.buckets import pack_buckets, unpack_bucket

    world = min(torch.cuda.device_count(), 4)
    tensors = {f"w{i}": torch.randn(256, 1024 + i) for i in range(6)}
    blobs = list(pack_buckets(tensors.items(), bucket_mb=2.0, version=7))
    store = torch.distributed.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                                       timeout=timedelta(seconds=60))
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_rank, args=(world, store.port, blobs, results), nprocs=world, join=True)
    for rank in range(1, world):
        assert [bytes(b) for b in results[rank]] == blobs
        for blob in results[rank]:
            unpack_bucket(blob, expect_version=7)  # sha256 verified
