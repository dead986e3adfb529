import pytest
import torch
from sklearn.datasets import load_digits

from dltrain.config import DataConfig
from dltrain.data import build_splits, make_loader, stratified_split
from dltrain.errors import DltrainError


@pytest.mark.parametrize("size, expected", [(0.1, 30), (0.25, 75), (31, 31), (1, 1)])
def test_stratified_split_is_disjoint_sized_and_balanced(size, expected):
    labels = torch.arange(3).repeat_interleave(torch.tensor([150, 100, 50]))
    keep, held = stratified_split(labels, size, seed=0)
    assert len(held) == expected
    assert len(set(keep.tolist()) & set(held.tolist())) == 0
    assert sorted(keep.tolist() + held.tolist()) == list(range(300))
    counts = torch.bincount(labels[held], minlength=3).float()
    assert torch.all((counts - expected * torch.tensor([0.5, 1 / 3, 1 / 6])).abs() <= 1)


def test_stratified_split_is_seeded():
    labels = torch.randint(0, 5, (500,), generator=torch.Generator().manual_seed(1))
    first = stratified_split(labels, 0.2, seed=7)[1]
    assert torch.equal(first, stratified_split(labels, 0.2, seed=7)[1])
    assert not torch.equal(first, stratified_split(labels, 0.2, seed=8)[1])


def test_split_that_leaves_nothing_is_an_error():
    with pytest.raises(DltrainError, match="data.val_split=500 asks for 500 of the 100 samples"):
        stratified_split(torch.zeros(100, dtype=torch.long), 500, seed=0)


def test_digits_splits_are_real_disjoint_and_test_is_fixed():
    a = build_splits(DataConfig(dataset="digits", val_split=0.2), seed=0)
    b = build_splits(DataConfig(dataset="digits", val_split=0.2), seed=1)
    assert a.sizes == {"train": 1150, "val": 288, "test": 359}
    assert sum(a.sizes.values()) == 1797
    assert a.info.class_names == [str(i) for i in range(10)]
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (1, 8, 8)
    # The test split does not depend on the run's seed; validation does.
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.val.images, b.val.images)
    # Together the three splits are exactly the 1,797 source images: none twice, none lost.
    source = torch.from_numpy(load_digits().images).mul(255 / 16).round().to(torch.uint8)
    ours = torch.cat([a.train.images, a.val.images, a.test.images]).squeeze(1)
    assert sorted(map(bytes, source.flatten(1).numpy())) == sorted(
        map(bytes, ours.flatten(1).numpy())
    )


def test_batches_are_normalized_and_cover_the_split_once():
    splits = build_splits(DataConfig(dataset="digits", batch_size=100), seed=0)
    loader = make_loader(splits, "val", DataConfig(eval_batch_size=50), torch.device("cpu"))
    images = torch.cat([x for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    expected = (splits.val.images.float() / 255 - 0.3053) / 0.3760
    torch.testing.assert_close(images, expected)
    assert torch.equal(labels, splits.val.labels)
    assert abs(float(images.mean())) < 0.15 and abs(float(images.std()) - 1) < 0.15


def test_train_batches_shuffle_reproducibly():
    splits = build_splits(DataConfig(dataset="digits"), seed=0)
    cfg = DataConfig(batch_size=64)

    def order(seed):
        loader = make_loader(splits, "train", cfg, torch.device("cpu"), seed=seed)
        return torch.cat([y for _, y in loader])

    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert torch.equal(order(3).sort().values, splits.train.labels.sort().values)
