"""A trial stopped mid-way resumes from its checkpoint and ends exactly as one trained straight through."""
import pytest
import torch

from nasjobs.artifacts import ArtifactStore, FileCheckpoint
from nasjobs.datasets import load_digits
from nasjobs.estimators.low_fidelity import LowFidelityConfig, LowFidelityEstimator
from nasjobs.estimators.median_stopping import MedianStoppingConfig, MedianStoppingEstimator
from nasjobs.estimators.train import TrainConfig, TrainEstimator
from nasjobs.estimators.zero_cost import ZeroCostConfig, ZeroCostEstimator
from nasjobs.search import ExperimentSpec, MemoryStore, SearchRunner
from nasjobs.spaces.chain_cnn import ChainCNN, ChainCNNConfig

CPU = torch.device("cpu")
SPACE = ChainCNN(ChainCNNConfig(max_layers=2, filters=(8, 16), kernels=(3,)))
ARCH = SPACE.from_str("c8k3p-c16k3")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


class WorkerKilled(Exception):
    """Stands for a worker killed after an epoch: training stops there, the checkpoint left as it was."""


def killed_after(epochs: int):
    def hook(epoch: int, acc: float) -> None:
        if epoch == epochs:
            raise WorkerKilled
    return hook


def resumed_run(estimator, checkpoint, budget: int, stop_after: int, seed: int = 5):
    """Evaluate, "crash" after `stop_after` epochs, then evaluate again (a fresh estimator, as on another worker)."""
    with pytest.raises(WorkerKilled):
        estimator().evaluate(ARCH, budget, seed=seed, hook=killed_after(stop_after), resume=checkpoint)
    return estimator().evaluate(ARCH, budget, seed=seed, resume=checkpoint)


def same_training(a, b) -> bool:
    return (a.curve == b.curve and a.loss_curve == b.loss_curve and a.val_acc == b.val_acc
            and all(torch.equal(a.state[k], b.state[k]) for k in a.state))


@pytest.mark.parametrize("make", [
    lambda ds: TrainEstimator(SPACE, ds, TrainConfig(), CPU),
    lambda ds: LowFidelityEstimator(SPACE, ds, LowFidelityConfig(epoch_fraction=1.0, data_fraction=0.5), CPU),
    # No completed trials: the rule never applies, so the trial trains its whole budget.
    lambda ds: MedianStoppingEstimator(SPACE, ds, MedianStoppingConfig(), CPU),
], ids=["train", "low_fidelity", "median_stopping"])
def test_a_trial_resumed_after_a_crash_ends_exactly_as_one_trained_straight_through(digits, tmp_path, make):
    straight = make(digits).evaluate(ARCH, 3, seed=5)
    checkpoint = FileCheckpoint(tmp_path / "trial-00000.partial.pt", every_seconds=0)
    resumed = resumed_run(lambda: make(digits), checkpoint, 3, stop_after=2)
    assert resumed.resumed_from_epoch == 2 and straight.resumed_from_epoch is None
    assert len(resumed.curve) == 3
    assert same_training(resumed, straight)
    assert resumed.fidelity == straight.fidelity


def test_a_checkpoint_is_saved_at_most_every_so_many_seconds(digits, tmp_path):
    saved: list[int] = []

    class Counting(FileCheckpoint):
        def save(self, state):
            saved.append(state["trainer"]["epoch"])
            super().save(state)

    TrainEstimator(SPACE, digits, TrainConfig(), CPU).evaluate(
        ARCH, 3, seed=0, resume=Counting(tmp_path / "often.pt", every_seconds=0))
    TrainEstimator(SPACE, digits, TrainConfig(), CPU).evaluate(
        ARCH, 3, seed=0, resume=Counting(tmp_path / "rarely.pt", every_seconds=3600))
    assert saved == [1, 2, 3]  # every epoch at 0; none within an hour
    assert not (tmp_path / "rarely.pt").exists()


def test_a_checkpoint_of_another_training_is_ignored(digits, tmp_path, caplog):
    """A re-evaluation of the trial trains with another seed: a checkpoint its first evaluation left is not its."""
    checkpoint = FileCheckpoint(tmp_path / "trial-00000.partial.pt", every_seconds=0)
    with pytest.raises(WorkerKilled):
        TrainEstimator(SPACE, digits, TrainConfig(), CPU).evaluate(ARCH, 3, seed=1, hook=killed_after(1),
                                                                   resume=checkpoint)
    again = TrainEstimator(SPACE, digits, TrainConfig(), CPU).evaluate(ARCH, 3, seed=2, resume=checkpoint)
    assert again.resumed_from_epoch is None
    assert same_training(again, TrainEstimator(SPACE, digits, TrainConfig(), CPU).evaluate(ARCH, 3, seed=2))
    assert "ignored a checkpoint of another training" in caplog.text


def test_a_resume_is_logged_and_training_time_counts_the_epochs_before_it(digits, tmp_path, caplog):
    checkpoint = FileCheckpoint(tmp_path / "trial-00000.partial.pt", every_seconds=0)
    caplog.set_level("INFO", logger="nasjobs.training")
    resumed = resumed_run(lambda: TrainEstimator(SPACE, digits, TrainConfig(), CPU), checkpoint, 3, stop_after=2)
    assert "resumed at epoch 2 of 3 from the trial's checkpoint" in caplog.text
    assert resumed.train_seconds > float(checkpoint.load()["train_seconds"]) > 0


def test_estimators_that_train_one_network_per_trial_take_a_checkpoint_and_the_others_do_not(digits):
    assert TrainEstimator(SPACE, digits, TrainConfig(), CPU).resumable
    assert MedianStoppingEstimator(SPACE, digits, MedianStoppingConfig(), CPU).resumable
    assert LowFidelityEstimator(SPACE, digits, LowFidelityConfig(), CPU).resumable
    assert not ZeroCostEstimator(SPACE, digits, ZeroCostConfig(), CPU).resumable


def test_the_checkpoint_is_written_atomically_and_discarded(tmp_path):
    checkpoint = ArtifactStore(tmp_path, 7).trial_checkpoint(3, every_seconds=0)
    assert checkpoint.path == tmp_path / "experiment-7" / "trial-00003.partial.pt"
    assert checkpoint.load() is None
    checkpoint.save({"epoch": torch.tensor(1)})
    checkpoint.save({"epoch": torch.tensor(2)})
    assert int(checkpoint.load()["epoch"]) == 2
    assert sorted(p.name for p in checkpoint.path.parent.iterdir()) == ["trial-00003.partial.pt"]  # no temp file
    checkpoint.discard()
    checkpoint.discard()  # idempotent
    assert not checkpoint.path.exists()


def test_forgetting_weights_leaves_the_checkpoints_of_trials_under_way(tmp_path):
    store = ArtifactStore(tmp_path, 1)
    for n in (0, 1):
        store.save(n, {"w": torch.zeros(1)})
    store.trial_checkpoint(2).save({"epoch": 1})
    store.keep_only([1])
    assert sorted(p.name for p in store.dir.iterdir()) == ["trial-00001.pt", "trial-00002.partial.pt"]


SPEC = ExperimentSpec("digits", "chain_cnn", "random", "train", budget=3, epochs=3, seed=4, top_k=3,
                      options={"space": {"max_layers": 2, "filters": "8,16"}})


def test_a_search_killed_mid_trial_resumes_that_trial_at_its_last_epoch_and_cleans_up(tmp_path, monkeypatch):
    straight = MemoryStore()
    SearchRunner(SPEC, straight, ArtifactStore(tmp_path / "a", 1), CPU, checkpoint_seconds=0).run()

    crashed = MemoryStore()
    runner = SearchRunner(SPEC, crashed, ArtifactStore(tmp_path / "b", 1), CPU, checkpoint_seconds=0)
    evaluate = runner.estimator.evaluate

    def dies_in_trial_1_after_epoch_2(arch, budget, *, seed, hook=None, resume=None):
        return evaluate(arch, budget, seed=seed, hook=killed_after(2) if len(crashed.trials) == 1 else hook,
                        resume=resume)

    monkeypatch.setattr(runner.estimator, "evaluate", dies_in_trial_1_after_epoch_2)
    with pytest.raises(WorkerKilled):
        runner.run()
    assert len(crashed.trials) == 1
    assert (tmp_path / "b" / "experiment-1" / "trial-00001.partial.pt").exists()

    resumed = MemoryStore(state=crashed.state, trials=list(crashed.trials))
    SearchRunner(SPEC, resumed, ArtifactStore(tmp_path / "b", 1), CPU, checkpoint_seconds=0).run()
    assert [t.resumed_from_epoch for t in resumed.trials] == [None, 2, None]
    assert [(t.arch_key, t.curve, t.loss_curve) for t in resumed.trials] == [
        (t.arch_key, t.curve, t.loss_curve) for t in straight.trials]
    assert not list((tmp_path / "b" / "experiment-1").glob("*.partial.*"))
