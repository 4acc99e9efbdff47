import io

import numpy as np
import torch

from nasjobs.datasets import DATASETS, load_digits, split_indices
from nasjobs.estimators import ESTIMATORS
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.metrics import count_macs, count_params
from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig

SPACE = ChainCNN(ChainCNNConfig())
CPU = torch.device("cpu")


def test_digits_ships_with_the_package_and_splits_without_overlap():
    ds = DATASETS.get("digits")()
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert set(ds.val.y.tolist()) == set(range(10)) and set(ds.test.y.tolist()) == set(range(10))
    labels = np.concatenate([ds.train.y.numpy(), ds.val.y.numpy(), ds.test.y.numpy()])
    parts = split_indices(labels, (0.6, 0.2, 0.2), seed=0)
    assert sum(len(p) for p in parts) == len(set(np.concatenate(parts).tolist())) == 1797


def test_training_learns_and_reports_cost():
    estimator = TrainEstimator(SPACE, load_digits(), TrainConfig(), CPU)
    arch = SPACE.from_str("c32k3p-c64k3")
    result = estimator.evaluate(arch, 4, seed=0)
    assert result.val_acc > 0.8  # ten classes: chance is 0.1
    assert len(result.curve) == 4 and result.curve[-1] == result.val_acc
    model = SPACE.build(arch, (1, 8, 8), 10)
    assert result.params == count_params(model)
    # conv1: 64 px * 32 * 9, conv2 (after pooling to 4x4): 16 px * 64 * 32 * 9, head: 64 * 10
    assert result.flops == count_macs(model, (1, 8, 8)) == 64 * 32 * 9 + 16 * 64 * 32 * 9 + 640
    assert result.fidelity == {"epochs": 4, "data_fraction": 1.0}
    test_acc = estimator.test_accuracy(arch, result.state)
    assert 0.8 < test_acc <= 1.0


def test_training_is_reproducible_for_a_seed_and_leaves_global_rng_alone():
    estimator = ESTIMATORS.get("train")(SPACE, load_digits(), TrainConfig(), CPU)
    arch = SPACE.from_str("c16k3p-c16k5")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = estimator.evaluate(arch, 2, seed=7)
    after = torch.rand(1)
    b = estimator.evaluate(arch, 2, seed=7)
    assert a.curve == b.curve
    assert torch.equal(before, after)
    c = estimator.evaluate(arch, 2, seed=8)
    assert any(not torch.equal(c.state[k], a.state[k]) for k in a.state)


def test_the_hook_can_stop_training():
    estimator = TrainEstimator(SPACE, load_digits(), TrainConfig(), CPU)
    seen = []

    def hook(epoch, acc):
        seen.append(epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    try:
        estimator.evaluate(SPACE.from_str("c16k3"), 5, seed=0, hook=hook)
    except KeyboardInterrupt:
        pass
    assert seen == [1, 2]


def test_a_network_with_an_auxiliary_head_trains_with_the_weighted_auxiliary_loss():
    from nasjobs.options import parse_config
    from nasjobs.spaces import SPACES

    darts_cls = SPACES.get("darts")
    space = darts_cls(parse_config(darts_cls.Config, {"init_channels": 4, "layers": 3, "auxiliary": True}))
    arch = space.sample(__import__("random").Random(0))
    result = TrainEstimator(space, load_digits(), TrainConfig(), CPU).evaluate(arch, 1, seed=0)
    assert 0.0 <= result.val_acc <= 1.0 and len(result.curve) == 1


def test_augmentation_crops_flips_and_cuts_out_from_its_generator_alone():
    from nasjobs.augment import Augmentation

    x = torch.arange(1, 4 * 2 * 6 * 6 + 1, dtype=torch.float32).reshape(4, 2, 6, 6)
    draw = lambda aug, seed: aug(x, torch.Generator().manual_seed(seed))  # noqa: E731
    crop = Augmentation(crop_padding=2)
    assert torch.equal(draw(crop, 0), draw(crop, 0)) and not torch.equal(draw(crop, 0), draw(crop, 1))
    cropped = draw(crop, 0)
    for image, source in zip(cropped, x):  # a shifted window of the zero-padded image: every pixel is 0 or kept
        kept = image[image != 0]
        assert set(kept.tolist()) <= set(source.flatten().tolist()) and len(kept) >= 2 * 4 * 4
    flipped = draw(Augmentation(flip=True), 3)
    assert all(torch.equal(f, s) or torch.equal(f, s.flip(-1)) for f, s in zip(flipped, x))
    cut = draw(Augmentation(cutout=3), 5)
    zeroed = (cut == 0).all(dim=1)  # both channels together
    assert all(0 < int(z.sum()) <= 9 for z in zeroed) and torch.equal(cut[~(cut == 0)], x[~(cut == 0)])
    assert not Augmentation().active


def test_training_with_augmentation_is_reproducible_and_differs_from_without():
    arch = SPACE.from_str("c16k3p-c16k5")
    plain = TrainEstimator(SPACE, load_digits(), TrainConfig(), CPU).evaluate(arch, 1, seed=7)
    augmented = TrainEstimator(SPACE, load_digits(), TrainConfig(crop_padding=1, flip=True, cutout=2), CPU)
    a, b = augmented.evaluate(arch, 1, seed=7), augmented.evaluate(arch, 1, seed=7)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert any(not torch.equal(a.state[k], plain.state[k]) for k in a.state)


def test_a_resumed_augmented_training_matches_an_uninterrupted_one():
    from nasjobs.augment import Augmentation
    from nasjobs.training import SGDSettings, Trainer, seeded_init

    ds = load_digits()
    settings = SGDSettings(0.05, 0.9, 5e-4, 64, augmentation=Augmentation(crop_padding=1, cutout=2))
    build = lambda: seeded_init(lambda: SPACE.build(SPACE.from_str("c16k3"), (1, 8, 8), 10), 0)  # noqa: E731
    straight = Trainer(build(), ds.train, ds.val, settings, 2, 3, CPU)
    straight.run(2)
    first = Trainer(build(), ds.train, ds.val, settings, 2, 3, CPU)
    first.run(1)
    resumed = Trainer(build(), ds.train, ds.val, settings, 2, 3, CPU)
    resumed.load_state_dict(first.state_dict())
    resumed.run(2)
    assert resumed.curve == straight.curve
    assert all(torch.equal(v, straight.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())


def test_a_split_that_fits_is_copied_to_the_device_once_and_a_large_one_stays_on_the_host(monkeypatch):
    from nasjobs import training
    from nasjobs.datasets import Split

    monkeypatch.setattr(training, "_ON_DEVICE", {})
    meta = torch.device("meta")  # a device of its own that needs no accelerator
    small = Split(torch.zeros(10, 1, 8, 8), torch.zeros(10, dtype=torch.int64))
    moved = training.on_device(small, meta, budget=10_000)
    assert moved.x.device.type == "meta" and moved.y.device.type == "meta"
    assert training.on_device(small, meta, budget=10_000) is moved  # once per process, shared by later trials
    large = Split(torch.zeros(100, 1, 8, 8), torch.zeros(100, dtype=torch.int64))
    assert training.on_device(large, meta, budget=10_000) is large  # 26 kB > 10 kB: batches are copied instead
    assert training.on_device(small, CPU) is small


def test_streaming_through_a_dataloader_with_workers_trains_exactly_as_resident_tensors(monkeypatch):
    from nasjobs.training import SGDSettings, Trainer, seeded_init

    monkeypatch.setenv("NAS_LOADER_WORKERS", "2")  # real worker processes gather the batches
    ds = load_digits()
    arch = SPACE.from_str("c16k3p-c32k3")
    settings = SGDSettings(lr=0.05, momentum=0.9, weight_decay=3e-4, batch_size=64)
    results = []
    for stream in (False, True):
        model = seeded_init(lambda: SPACE.build(arch, (1, 8, 8), 10), 0)
        trainer = Trainer(model, ds.train, ds.val, settings, 2, seed=3, device=CPU, stream=stream)
        results.append((trainer.run(2), trainer.state_dict()["model"]))
    (curve, weights), (streamed_curve, streamed_weights) = results
    assert curve == streamed_curve and curve[-1] > 0.5
    assert all(torch.equal(weights[k], streamed_weights[k]) for k in weights)


def test_channels_last_trains_the_same_loss_trajectory_on_cpu():
    from nasjobs.training import SGDSettings, Trainer, seeded_init

    ds = load_digits()
    arch = SPACE.from_str("c16k3p-c32k3")
    settings = SGDSettings(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=64)
    runs = []
    for channels_last in (False, True):
        model = seeded_init(lambda: SPACE.build(arch, (1, 8, 8), 10), 0)
        trainer = Trainer(model, ds.train, ds.val, settings, 2, seed=3, device=CPU, channels_last=channels_last)
        losses = [float(trainer._step_batch(ds.train.x[i:i + 64], ds.train.y[i:i + 64]))
                  for i in range(0, 640, 64)]
        curve = trainer.run(1)
        convs = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
        in_order = [w.is_contiguous(memory_format=torch.channels_last) for w in convs]
        assert all(in_order) if channels_last else not all(in_order)  # a 1-channel conv is in both orders
        runs.append((losses, curve, trainer.state_dict()["model"]))
    (losses, curve, weights), (cl_losses, cl_curve, cl_weights) = runs
    assert losses[-1] < losses[0]
    assert np.allclose(losses, cl_losses, rtol=1e-4, atol=1e-5)
    assert np.allclose(curve, cl_curve, atol=0.01)  # at most a few of 360 validation images change class
    assert all(torch.allclose(weights[k].float(), cl_weights[k].float(), rtol=1e-3, atol=1e-4) for k in weights)


def test_bf16_on_cpu_is_refused_with_a_clear_error():
    import pytest

    from nasjobs.training import SGDSettings, Trainer, train_epochs

    ds = load_digits()
    settings = SGDSettings(lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=64)
    model = SPACE.build(SPACE.from_str("c16k3"), (1, 8, 8), 10)
    with pytest.raises(ValueError, match="bf16 autocast needs a CUDA device"):
        Trainer(model, ds.train, ds.val, settings, 1, seed=0, device=CPU, bf16=True)
    with pytest.raises(ValueError, match="bf16 autocast needs a CUDA device"):
        train_epochs(model, ds.train, ds.val, 1, settings, 0, CPU, bf16=True)


def test_a_training_whose_loss_turns_nan_stops_with_the_reason():
    import pytest

    from nasjobs.datasets import Split
    from nasjobs.training import Trainer, TrainingDiverged

    data = load_digits()
    x = data.train.x.clone()
    x[0] = float("nan")  # one poisoned sample: its batch's loss, and every weight after it, become NaN
    estimator = TrainEstimator(SPACE, data, TrainConfig(), CPU)
    model = SPACE.build(SPACE.from_str("c16k3"), data.input_shape, data.num_classes)
    with pytest.raises(TrainingDiverged, match="the training loss became nan by epoch 1: the network diverged"):
        Trainer(model, Split(x, data.train.y), data.val, estimator._settings(), 2, 0, CPU).run(2)


def test_training_records_the_mean_training_loss_of_every_epoch_beside_the_curve():
    from nasjobs.training import SGDSettings, Trainer, seeded_init

    ds = load_digits()
    settings = SGDSettings(0.05, 0.9, 5e-4, 64)
    model = seeded_init(lambda: SPACE.build(SPACE.from_str("c16k3p-c32k3"), (1, 8, 8), 10), 0)
    trainer = Trainer(model, ds.train, ds.val, settings, 3, 0, CPU)
    trainer.run(3)
    assert len(trainer.loss_curve) == len(trainer.curve) == 3
    assert all(isinstance(v, float) and v > 0 for v in trainer.loss_curve)
    assert trainer.loss_curve[-1] < trainer.loss_curve[0]  # it learns: ten classes start near ln(10) = 2.3
    assert 1.0 < trainer.loss_curve[0] < 2.5

    result = TrainEstimator(SPACE, ds, TrainConfig(), CPU).evaluate(SPACE.from_str("c16k3p-c32k3"), 3, seed=0)
    assert len(result.loss_curve) == 3 and result.curve == trainer.curve  # the same seed trains the same way


def test_every_epoch_logs_one_line_with_its_loss_accuracy_and_seconds(caplog):
    import logging

    estimator = TrainEstimator(SPACE, load_digits(), TrainConfig(), CPU)
    with caplog.at_level(logging.INFO, logger="nasjobs"):
        result = estimator.evaluate(SPACE.from_str("c16k3"), 2, seed=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "nasjobs.training"]
    assert len(lines) == 2
    assert lines[1].startswith("epoch 2/2: train loss ")
    assert f"train loss {result.loss_curve[1]:.4f}, val acc {100 * result.curve[1]:.2f}%, " in lines[1]
    assert lines[1].endswith(" s")


def test_a_checkpoint_round_trips_the_loss_curve_and_an_old_one_without_it_still_loads():
    from nasjobs.training import SGDSettings, Trainer, seeded_init

    ds = load_digits()
    settings = SGDSettings(0.05, 0.9, 5e-4, 64)
    build = lambda: seeded_init(lambda: SPACE.build(SPACE.from_str("c16k3"), (1, 8, 8), 10), 0)  # noqa: E731
    straight = Trainer(build(), ds.train, ds.val, settings, 3, 3, CPU)
    straight.run(3)
    first = Trainer(build(), ds.train, ds.val, settings, 3, 3, CPU)
    first.run(2)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # through a file, as successive halving keeps it between rungs

    def checkpoint() -> dict:
        saved.seek(0)
        return torch.load(saved, weights_only=True)

    state = checkpoint()
    assert state["loss_curve"] == first.loss_curve and len(state["loss_curve"]) == 2

    resumed = Trainer(build(), ds.train, ds.val, settings, 3, 3, CPU)
    resumed.load_state_dict(state)
    resumed.run(3)
    assert resumed.loss_curve == straight.loss_curve and resumed.curve == straight.curve

    # A checkpoint written before the loss was recorded (successive halving keeps them between rungs): the
    # epochs it trained have no known loss, the ones trained after it do.
    old = {k: v for k, v in checkpoint().items() if k != "loss_curve"}
    resumed_old = Trainer(build(), ds.train, ds.val, settings, 3, 3, CPU)
    resumed_old.load_state_dict(old)
    assert resumed_old.epoch == 2 and resumed_old.loss_curve == [None, None]
    resumed_old.run(3)
    assert resumed_old.curve == straight.curve
    assert resumed_old.loss_curve[:2] == [None, None] and resumed_old.loss_curve[2] == straight.loss_curve[2]
