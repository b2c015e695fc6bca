"""The cluster path: a real Ray head (`ray start --head`) and a run submitted with `ray job submit`.

The driver then joins the cluster through RAY_ADDRESS instead of starting its own Ray, the working
directory is uploaded by Ray, and the job must reach SUCCEEDED with its artifacts on disk. The run is the
bring-your-own-model recipe on a Qwen2 checkpoint (``chat_job``, tests/e2e/ray_job.py: its dataset and its
judge come from the uploaded working directory, its learner is two ZeRO-3 ranks), whose run directory
tests/e2e/test_byo_model_data.py checks.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_a_recipe_through_ray_job_submit(chat_job):
    from ray.job_submission import JobStatus

    assert chat_job.returncode == 0, chat_job.log[-5000:]
    assert chat_job.status == JobStatus.SUCCEEDED, (chat_job.status, chat_job.log[-3000:])
    assert f"Job '{chat_job.job_id}' succeeded" in chat_job.log, chat_job.log[-3000:]
    manifest = json.loads((chat_job.run_dir / "manifest.json").read_text())
    assert manifest["iterations"]["0"]["complete"] is True
    assert (chat_job.run_dir / "iter_000" / "policy" / "model.safetensors").exists()
    # the driver joined the head (RAY_ADDRESS, set by Ray for a job) instead of starting a Ray of its own
    assert manifest["cores"]["reason"].startswith("a Ray cluster"), manifest["cores"]
