"""A load call on a generator that Ray is restarting is sent again once it is back (real Ray actors).

The generator here is a small Ray actor with the loading method a sync calls; its death is the
injected fault (``os._exit`` inside the call, once). Everything else is the real ``call_all``.
"""

from __future__ import annotations

import time

import pytest

from selfplay.remote import RemoteCallError, call_all


def _actor_class(ray):
    @ray.remote(max_restarts=1, num_cpus=0)
    class Loader:
        def __init__(self, marker: str):
            self.marker = marker

        def load_buckets(self, payload, version):
            import os
            from pathlib import Path

            if not Path(self.marker).exists():
                Path(self.marker).write_text("died once")
                os._exit(1)  # injected fault: the generator process dies mid-load
            return f"loaded {payload} as version {version}"

    return Loader


def test_load_on_a_restarting_generator_is_retried(ray_local, tmp_path):
    Loader = _actor_class(ray_local)
    actor = Loader.remote(str(tmp_path / "marker"))
    start = time.monotonic()
    out = call_all([("generator-0", actor)], "load_buckets", ("w", 2), timeout=120, retry_dead=True)
    assert out == ["loaded w as version 2"]
    assert (tmp_path / "marker").read_text() == "died once"  # it did die, and was loaded after its restart
    assert time.monotonic() - start < 120


def test_without_retry_or_when_it_stays_dead_the_error_names_it(ray_local, tmp_path):
    Loader = _actor_class(ray_local)
    actor = Loader.remote(str(tmp_path / "marker2"))
    with pytest.raises(RemoteCallError, match=r"generator-0.load_buckets failed: its actor died"):
        call_all([("generator-0", actor)], "load_buckets", ("w", 2), timeout=60)
    ray_local.kill(actor, no_restart=True)  # now it is gone for good
    start = time.monotonic()
    with pytest.raises(RemoteCallError, match=r"generator-0.load_buckets failed: its actor died"):
        call_all([("generator-0", actor)], "load_buckets", ("w", 2), timeout=60, retry_dead=True)
    assert time.monotonic() - start < 30  # a few quick retries, not the whole deadline
