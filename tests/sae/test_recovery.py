"""SAEs trained on synthetic data recover the sparse directions the data was made of.

Each input is a sum of 3-5 of 256 random unit directions in 64 dimensions, with
magnitudes in [0.5, 2]. A working SAE learns decoder rows that point along those
directions: for most of them, some decoder row has cosine > 0.9 with it (random rows
manage about 0.5).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from lmscope.sae import SAE, build_sae
from lmscope.sae.trainer import train_sae


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matrices: thread synchronisation would cost more than it saves (and make the
    time depend on the machine's load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


D, N_TRUE, MAX_ACTIVE = 64, 256, 5


def ground_truth(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(N_TRUE, D, generator=gen), dim=1)


def sparse_batches(
    directions: torch.Tensor, n: int, rows: int, seed: int = 1
) -> list[torch.Tensor]:
    """`n` batches: each row sums 3-5 random directions with magnitudes in [0.5, 2]."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        which = torch.randint(0, N_TRUE, (rows, MAX_ACTIVE), generator=gen)
        active = torch.arange(MAX_ACTIVE)[None] < torch.randint(3, 6, (rows, 1), generator=gen)
        size = (torch.rand(rows, MAX_ACTIVE, generator=gen) * 1.5 + 0.5) * active
        out.append(F.embedding_bag(which, directions, per_sample_weights=size, mode="sum"))
    return out


def recovered(sae: SAE, directions: torch.Tensor) -> torch.Tensor:
    """Fraction of true directions some decoder row matches with cosine > 0.9."""
    rows = F.normalize(sae.W_dec.detach(), dim=1)
    return (rows @ directions.T).max(0).values.gt(0.9).float().mean()


@pytest.mark.parametrize(
    ("arch", "kw", "lr"),
    [("topk", {"k": 5}, 3e-3), ("standard", {"l1_coefficient": 1.0}, 5e-3)],
)
def test_training_recovers_the_true_directions(arch: str, kw: dict, lr: float) -> None:
    truth = ground_truth()
    pool = sparse_batches(truth, 50, rows=256)
    sae = build_sae(d_in=D, d_sae=512, arch=arch, seed=0, **kw)
    assert recovered(sae, truth) < 0.05  # the untrained SAE: chance level
    steps = 400
    result = train_sae(
        sae,
        (pool[i % len(pool)] for i in range(steps)),
        total_steps=steps,
        lr=lr,
        lr_warmup_steps=20,
        dead_after_tokens=20_000,
        log_every=steps,
    )
    assert recovered(sae, truth) >= 0.8
    line = result.metrics[next(iter(result.metrics))]
    assert line["fvu"] < 0.3 and line["l0"] < 10


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "kw", "lr"),
    [
        ("batchtopk", {"k": 5}, 3e-3),
        ("jumprelu", {"l0_coefficient": 0.05, "jumprelu_init_threshold": 0.1}, 3e-3),
        ("gated", {"l1_coefficient": 0.5}, 3e-3),
    ],
)
def test_the_other_variants_recover_the_true_directions_too(arch: str, kw: dict, lr: float) -> None:
    truth = ground_truth()
    pool = sparse_batches(truth, 100, rows=256)
    sae = build_sae(d_in=D, d_sae=512, arch=arch, seed=0, **kw)
    steps = 2000
    train_sae(
        sae,
        (pool[i % len(pool)] for i in range(steps)),
        total_steps=steps,
        lr=lr,
        lr_warmup_steps=50,
        sparsity_warmup_steps=200,
        dead_after_tokens=20_000,
        log_every=steps,
    )
    assert recovered(sae, truth) >= 0.8
