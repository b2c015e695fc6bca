"""GPU tier on one CUDA device: what runs there without Ray or vLLM (the accelerator machines lent to this
project have torch, transformers and DeepSpeed, not Ray or vLLM).

* Every preference loss, computed on CUDA, equals the CPU value and gradient (float64, so the two devices
  differ only in the order of a few reductions).
* A learner step in bf16 on CUDA (DeepSpeed, ZeRO-0, world size 1): the first loss is log 2 (policy =
  reference), the round learns the toy preference, and the exported weights are finite and changed.
* A sync into a GPU process: buckets packed on the CPU side cross into a spawned CUDA process as bytes,
  are verified and loaded there (the same ``decode_sync`` the generator engines use), and the model's
  log-probs on a probe batch equal the sender's within 1e-3, the project's fp32 ``probe_tolerance``
  (GPU and CPU kernels reduce in different orders; TF32 is turned off so fp32 means fp32).

Skipped without CUDA (``gpu`` marker, see tests/conftest.py). See docs/gpu.md for where they ran.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.train.train_helpers import pair_accuracy, toy_pairs, weights

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def strict_fp32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def _loss_inputs(batch: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (2 * batch,), generator=gen)
    policy = (-lengths * (1 + 2 * torch.rand(2 * batch, generator=gen))).double()
    ref = policy + 3 * torch.randn(2 * batch, generator=gen, dtype=torch.float64)
    return policy, ref, lengths


def _preference_on(device: str, loss_type: str):
    from selfplay.losses import preference_loss

    policy, ref, lengths = (t.to(device) for t in _loss_inputs())
    policy = policy.clone().requires_grad_()
    pc, pr = policy.chunk(2)
    rc, rr = ref.chunk(2)
    lc, lr = lengths.chunk(2)
    params = {}  # the losses with inputs beyond log-probs and lengths
    if loss_type == "odpo":
        params = {"offset": torch.full((6,), 0.3, dtype=torch.float64, device=device)}
    elif loss_type == "sppo":  # the judge's win probabilities
        params = {"chosen_probs": torch.linspace(0.5, 0.95, 6, dtype=torch.float64, device=device),
                  "rejected_probs": torch.linspace(0.45, 0.05, 6, dtype=torch.float64, device=device)}
    losses, chosen, rejected = preference_loss(loss_type, pc, pr, rc, rr, beta=0.1, chosen_lengths=lc,
                                               rejected_lengths=lr, **params)
    losses.sum().backward()
    assert losses.device.type == torch.device(device).type
    return [t.detach().cpu() for t in (losses, chosen, rejected, policy.grad)]


def test_every_preference_loss_on_cuda_equals_cpu():
    from selfplay.losses import LOSS_PARAMS

    assert len(LOSS_PARAMS) >= 19
    for loss_type in sorted(LOSS_PARAMS):
        cpu, cuda = _preference_on("cpu", loss_type), _preference_on("cuda", loss_type)
        for name, a, b in zip(("losses", "chosen", "rejected", "grad"), cpu, cuda, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=lambda m, n=name, t=loss_type: f"{t} {n}: {m}")


def test_learner_bf16_round_on_cuda(tiny_model_dir):
    from selfplay.config.schema import TrainConfig
    from selfplay.train import Learner

    cfg = TrainConfig(learning_rate=1e-3, micro_batch_size=4, warmup_ratio=0.0, lr_schedule="constant", epochs=3,
                      precision="bf16")
    learner = Learner(tiny_model_dir, cfg, threads=1)
    try:
        assert learner.device.type == "cuda"
        before = weights(learner.export_weights())
        pairs = learner.compute_reference(toy_pairs(16))
        summary = learner.train_round(pairs)
        after = weights(learner.export_weights())
        now = learner.compute_reference(toy_pairs(16))
    finally:
        learner.shutdown()
    assert summary["steps"] == 3 * 4
    assert summary["losses"][0] == pytest.approx(math.log(2), abs=1e-3)  # policy = reference before the step
    assert summary["loss_last"] < 0.5 * summary["loss_first"]
    assert pair_accuracy(pairs, now) > 0.9
    assert all(torch.isfinite(t.float()).all() for t in after.values())
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged


def _gpu_receiver(blobs: list[bytes], model_dir: str, seqs: list[list[int]], results) -> None:
    import torch

    from selfplay.generate.weights import decode_sync
    from selfplay.models import load_policy

    torch.backends.cuda.matmul.allow_tf32 = False
    model, _ = load_policy(model_dir, dtype=torch.float32)
    model = model.to("cuda").eval()
    named, digest = decode_sync(blobs, 1, model.state_dict().keys())
    model.load_state_dict(dict(named), strict=True)
    out = []
    with torch.no_grad():
        for seq in seqs:
            x = torch.tensor([seq], device="cuda")
            lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])
            out.append(lp[:, 0].cpu().tolist())
    results["digest"], results["logps"] = digest, out
    results["device"] = str(next(model.parameters()).device)


def test_sync_into_a_gpu_process(tiny_model_dir):
    import torch.multiprocessing as mp

    from selfplay.generate import make_engine
    from selfplay.sync.buckets import sync_digest

    sender = make_engine("hf", tiny_model_dir, dtype="float32", batch_size=1)
    g = torch.Generator().manual_seed(3)
    sender.model.load_state_dict({k: v + 0.03 * torch.randn(v.shape, generator=g)
                                  for k, v in sender.model.state_dict().items()})
    blobs = sender.export_weights(bucket_mb=0.5, version=1)
    assert len(blobs) > 1
    seqs = [[1, 5, 10, 11, 12, 6, 14, 20, 30, 41], [3, 4, 5, 6, 7, 8], list(range(3, 90))]
    ctx = mp.get_context("spawn")  # a fresh process that initialises CUDA itself, as a generator actor would
    results = ctx.Manager().dict()
    proc = ctx.Process(target=_gpu_receiver, args=(blobs, str(tiny_model_dir), seqs, results))
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == 0, f"the GPU process exited with {proc.exitcode}"
    assert results["device"].startswith("cuda")
    assert results["digest"] == sync_digest(blobs)
    want = sender.probe_logps(seqs)
    got = results["logps"]
    assert [len(x) for x in got] == [len(x) for x in want] == [len(s) - 1 for s in seqs]
    worst = max(abs(a - b) for x, y in zip(got, want, strict=True) for a, b in zip(x, y, strict=True))
    assert worst <= 1e-3, worst
    initial = make_engine("hf", tiny_model_dir, dtype="float32", batch_size=1).probe_logps(seqs)
    assert max(abs(a - b) for x, y in zip(initial, want) for a, b in zip(x, y)) > 1e-2  # the sync mattered
