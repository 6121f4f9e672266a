"""The importance samplers, the indexed dataset and the importance loader."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from scipy.stats import chisquare
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from lightning_dnn_tricks.data import (
    AdaptiveImportanceSampler,
    DistributedAdaptiveImportanceSampler,
    EpochSeededRandomSampler,
    IndexedDataset,
    importance_dataloader,
    importance_sampler,
)
from lightning_dnn_tricks.data.indexed import (
    custom_sampling,
    find_importance_sampler,
    rebuild_problem,
)
from lightning_dnn_tricks.functional import importance_probabilities


def _target(n: int = 20) -> torch.Tensor:
    scores = torch.linspace(0.0, 3.0, n) ** 2
    return importance_probabilities(scores, theta=0.3)


def test_empirical_frequencies_match_the_target_distribution() -> None:
    p = _target()
    sampler = AdaptiveImportanceSampler(20, batch_size=50, num_samples=20000, seed=0)
    sampler.set_probabilities(p)
    pairs = list(sampler)
    counts = torch.bincount(torch.tensor([i for i, _ in pairs]), minlength=20).double()
    result = chisquare(counts.numpy(), (p * len(pairs)).numpy())
    assert result.pvalue > 0.01, result
    # the weights are 1 / (n p_i) of the drawn examples
    for i, weight in pairs[:100]:
        assert weight == pytest.approx(1.0 / (20 * p[i].item()))


def test_distributed_ranks_split_the_single_process_draw() -> None:
    p = _target()
    single = AdaptiveImportanceSampler(20, batch_size=6, num_samples=30, seed=4)
    single.set_probabilities(p)
    ranks = [
        DistributedAdaptiveImportanceSampler(
            20, batch_size=3, num_replicas=2, rank=r, num_samples=15, seed=4
        )
        for r in range(2)
    ]
    for sampler in ranks:
        sampler.set_probabilities(p)
        sampler.set_epoch(3)
    single.set_epoch(3)
    whole, parts = list(single), [list(s) for s in ranks]
    # block by block: rank 0's share, then rank 1's, is the single draw
    rebuilt = []
    for start in range(0, 15, 3):
        rebuilt += parts[0][start : start + 3] + parts[1][start : start + 3]
    assert rebuilt == whole
    assert isinstance(ranks[0], torch.utils.data.DistributedSampler)
    assert len(ranks[0]) == 15 and ranks[0].total_size == 30


def test_default_per_rank_samples_and_missing_process_group() -> None:
    sampler = DistributedAdaptiveImportanceSampler(11, batch_size=2, num_replicas=3, rank=2)
    assert len(sampler) == 4
    with pytest.raises(ValueError, match="`num_replicas`"):
        DistributedAdaptiveImportanceSampler(11, batch_size=2)
    with pytest.raises(ValueError, match="`rank`"):
        DistributedAdaptiveImportanceSampler(11, batch_size=2, num_replicas=2, rank=2)
    assert type(importance_sampler(range(5), 2)) is AdaptiveImportanceSampler
    assert isinstance(
        importance_sampler(range(5), 2, num_replicas=2, rank=0),
        DistributedAdaptiveImportanceSampler,
    )


def test_epochs_are_seeded_and_differ() -> None:
    sampler = AdaptiveImportanceSampler(50, batch_size=5, seed=1)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same draw
    sampler.set_epoch(1)
    assert list(sampler) != first
    other_seed = AdaptiveImportanceSampler(50, batch_size=5, seed=2)
    assert list(other_seed) != first


def test_resume_mid_epoch_is_bit_identical() -> None:
    p, q = _target(), importance_probabilities(torch.arange(20.0), theta=0.5)

    def run(resume_after: int | None) -> list[tuple[int, float]]:
        sampler = AdaptiveImportanceSampler(20, batch_size=4, num_samples=40, seed=7)
        sampler.set_probabilities(p)
        sampler.set_epoch(2)
        out: list[tuple[int, float]] = []
        iterator = iter(sampler)
        for step in range(10):
            if step == 5:  # a refresh in the middle of the epoch
                sampler.set_probabilities(q)
            if step == resume_after:
                state = sampler.state_dict()
                sampler = AdaptiveImportanceSampler(20, batch_size=4, num_samples=40, seed=7)
                sampler.load_state_dict(state)
                sampler.set_epoch(2)
                iterator = iter(sampler)
            out += [next(iterator) for _ in range(4)]
        return out

    uninterrupted = run(None)
    for crash in (3, 5, 7):
        assert run(crash) == uninterrupted


def test_state_of_an_undrawn_epoch_starts_fresh() -> None:
    sampler = AdaptiveImportanceSampler(10, batch_size=2, seed=3)
    fresh = AdaptiveImportanceSampler(10, batch_size=2, seed=3)
    fresh.load_state_dict(sampler.state_dict())
    assert list(fresh) == list(sampler)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"data_source": 0, "batch_size": 2}, "data_source"),
        ({"data_source": object(), "batch_size": 2}, "data_source"),
        ({"data_source": 5.0, "batch_size": 2}, "data_source"),
        ({"data_source": 5, "batch_size": 0}, "batch_size"),
        ({"data_source": 5, "batch_size": 2, "num_samples": 0}, "num_samples"),
        ({"data_source": 5, "batch_size": 2, "seed": -1}, "seed"),
    ],
)
def test_bad_sampler_arguments_raise_naming_them(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        AdaptiveImportanceSampler(**kwargs)  # type: ignore[arg-type]


def test_bad_probabilities_raise() -> None:
    sampler = AdaptiveImportanceSampler(3, batch_size=1)
    for bad in (torch.ones(4), torch.tensor([1.0, -1.0, 1.0]), torch.zeros(3)):
        with pytest.raises(ValueError, match="`probabilities`"):
            sampler.set_probabilities(bad)
    with pytest.raises(ValueError, match="`probabilities`"):
        sampler.set_probabilities(torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="`epoch`"):
        sampler.set_epoch(-1)


def test_indexed_dataset_and_loader_build_importance_batches() -> None:
    data = TensorDataset(torch.arange(12.0).view(6, 2), torch.arange(6))
    with pytest.raises(ValueError, match="`dataset`"):
        IndexedDataset(iter([1, 2]))  # type: ignore[arg-type]
    assert len(IndexedDataset(data)) == 6
    sampler = AdaptiveImportanceSampler(data, batch_size=4, seed=0)
    sampler.set_probabilities(torch.tensor([6.0, 1, 1, 1, 1, 1]))
    batches = list(importance_dataloader(data, batch_size=4, sampler=sampler))
    assert [len(b["index"]) for b in batches] == [4, 2]
    batch = batches[0]
    x, y = batch["example"]
    assert torch.equal(y, batch["index"]) and torch.equal(x[:, 0], 2.0 * batch["index"])
    expected = 1.0 / (6 * sampler.probabilities[batch["index"]])
    torch.testing.assert_close(batch["weight"], expected.float())
    assert batch["weight"].dtype == torch.float32
    assert batch["record"].shape == (4, 3) and batch["record"][:, 0].eq(0).all()
    assert torch.isnan(batch["record"][:, 1:]).all()


def test_custom_sampling_tells_plain_loaders_from_the_users_own_sampling() -> None:
    data = TensorDataset(torch.arange(8.0), torch.arange(8))
    plain = [
        DataLoader(data, batch_size=2),
        DataLoader(data, batch_size=2, shuffle=True),
        DataLoader(data, batch_size=2, sampler=EpochSeededRandomSampler(data, seed=0)),
        # what Lightning puts in place of a plain sampler under DDP
        DataLoader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=2, rank=0)),
    ]
    for loader in plain:
        assert custom_sampling(loader) is None and rebuild_problem(loader) is None
    weighted = WeightedRandomSampler([1.0] * 8, 8)
    assert custom_sampling(DataLoader(data, batch_size=2, sampler=weighted)) == (
        "sampler",
        weighted,
    )
    batches = BatchSampler(SequentialSampler(data), 2, drop_last=False)
    custom_batches = type("MyBatches", (BatchSampler,), {})(SequentialSampler(data), 2, False)
    assert custom_sampling(DataLoader(data, batch_sampler=batches)) is None
    assert custom_sampling(DataLoader(data, batch_sampler=custom_batches))[0] == "batch_sampler"  # type: ignore[index]


def test_lightnings_ddp_wrapper_of_a_custom_sampler_is_refused() -> None:
    """Under DDP Lightning wraps any sampler but Sequential/RandomSampler in a wrapper."""
    data = TensorDataset(torch.arange(8.0), torch.arange(8))
    wrapped = DistributedSamplerWrapper(WeightedRandomSampler([1.0] * 8, 8), num_replicas=2, rank=0)
    problem = rebuild_problem(DataLoader(data, batch_size=2, sampler=wrapped))
    assert problem is not None
    conflict, fix = problem
    assert "DistributedSamplerWrapper" in conflict and "under DDP, Lightning wraps" in conflict
    assert "Remove the sampler" in fix and "importance_dataloader" in fix


def test_rebuild_problem_of_unbatched_and_already_indexed_loaders() -> None:
    data = TensorDataset(torch.arange(8.0), torch.arange(8))
    conflict, _ = rebuild_problem(DataLoader(data, batch_size=None)) or ("", "")
    assert "no batch_size" in conflict
    conflict, _ = rebuild_problem(DataLoader(IndexedDataset(data), batch_size=2)) or ("", "")
    assert "builds importance batches" in conflict
    loader = importance_dataloader(data, batch_size=2)
    assert find_importance_sampler(loader) is loader.sampler
    assert find_importance_sampler(DataLoader(data, batch_size=2)) is None
