import itertools
import math
import random

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nasjobs.metrics import count_macs, count_params
from nasjobs.options import OptionError, parse_config
from nasjobs.spaces import SPACES, ArchParseError
from nasjobs.spaces.chain_cnn import ChainArch, ChainCNN, ChainCNNConfig, ConvLayer

SPACE = ChainCNN(ChainCNNConfig(max_layers=5, filters=(8, 16, 32), kernels=(1, 3, 5), strides=(1, 2),
                                pooling=True, skips=True))
CHAIN_ONLY = ChainCNN(ChainCNNConfig(max_layers=3, filters=(8, 16), kernels=(3, 5), skips=False))
SPACES_UNDER_TEST = st.sampled_from([SPACE, CHAIN_ONLY, ChainCNN()])
seeds = st.integers(min_value=0, max_value=2**32 - 1)
OLD_STRINGS = ["c16k3", "c32k5p", "c16k3p-c32k5", "c32k3p-c64k3", "c16k3p-c16k5", "c16k3p-c32k5-c8k1p"]


def sample(seed: int, space: ChainCNN = SPACE) -> ChainArch:
    return space.sample(random.Random(seed))


def assert_valid(space: ChainCNN, arch: ChainArch) -> None:
    assert space.from_str(space.to_str(arch)) == arch  # from_str checks membership and canonical form


def test_it_is_registered():
    assert SPACES.get("chain_cnn") is ChainCNN


@given(SPACES_UNDER_TEST, seeds)
def test_string_round_trips(space, seed):
    arch = sample(seed, space)
    assert space.from_str(space.to_str(arch)) == arch


@given(SPACES_UNDER_TEST, seeds)
def test_tokens_round_trip_within_the_vocabulary(space, seed):
    arch = sample(seed, space)
    tokens = space.to_tokens(arch)
    vocab = space.vocabulary()
    assert len(tokens) == len(vocab)
    assert all(0 <= t < len(v) for t, v in zip(tokens, vocab))
    assert space.from_tokens(tokens) == arch


@given(SPACES_UNDER_TEST, st.data())
def test_any_token_sequence_in_the_vocabulary_decodes_to_a_valid_architecture(space, data):
    """The REINFORCE controller samples each position freely."""
    tokens = [data.draw(st.integers(0, len(v) - 1)) for v in space.vocabulary()]
    arch = space.from_tokens(tokens)
    assert_valid(space, arch)
    assert len(arch.layers) == tokens[0] + 1
    assert space.from_tokens(space.to_tokens(arch)) == arch


def test_the_token_length_is_fixed_with_one_anchor_per_earlier_layer():
    # depth, then 5 per layer, then anchors 0..k-1 for layers k = 2..5
    assert len(SPACE.vocabulary()) == 1 + 5 * 5 + (2 + 3 + 4 + 5)
    assert len(CHAIN_ONLY.vocabulary()) == 1 + 5 * 3


def test_a_layer_whose_anchors_are_all_off_reads_the_image():
    space = ChainCNN(ChainCNNConfig(max_layers=2, filters=(8,), kernels=(3,)))
    assert space.vocabulary()[-2:] == [["-", "@0"], ["-", "@1"]]
    assert space.to_str(space.from_tokens([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])) == "c8k3-c8k3@0"
    assert space.to_str(space.from_tokens([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1])) == "c8k3-c8k3@0.1"


@given(SPACES_UNDER_TEST, seeds, seeds)
def test_mutate_gives_a_valid_different_architecture(space, seed, mutation_seed):
    arch = sample(seed, space)
    child = space.mutate(arch, random.Random(mutation_seed))
    assert child != arch
    assert_valid(space, child)
    assert child in space.neighbours(arch)


@settings(max_examples=20)
@given(seeds)
def test_neighbours_are_valid_distinct_and_exclude_the_origin(seed):
    arch = sample(seed)
    neighbours = SPACE.neighbours(arch)
    assert arch not in neighbours
    assert len(set(neighbours)) == len(neighbours)
    for n in neighbours:
        assert_valid(SPACE, n)
        assert abs(len(n.layers) - len(arch.layers)) <= 1


def test_mutations_cover_every_kind_of_edit():
    arch = SPACE.from_str("c16k3p-c32k5-c8k1p")
    texts = {SPACE.to_str(n) for n in SPACE.neighbours(arch)}
    assert "c32k3p-c32k5-c8k1p" in texts  # filters
    assert "c16k5x3p-c32k5-c8k1p" in texts and "c16k3x5p-c32k5-c8k1p" in texts  # kernel height, width
    assert "c16k3s2p-c32k5-c8k1p" in texts  # stride
    assert "c16k3-c32k5-c8k1p" in texts  # pooling
    assert "c16k3p-c32k5-c8k1p@0.2" in texts and "c16k3p-c32k5-c8k1p@1.2" in texts  # toggle a skip
    assert "c16k3p-c8k1p" in texts  # remove a layer: the chain closes over it
    assert "c16k3p-c32k5-c8k1-c8k1p" in texts  # add a layer: it is spliced into the chain


def test_removing_a_layer_hands_its_inputs_to_its_readers():
    space = ChainCNN(ChainCNNConfig(max_layers=4, filters=(8, 16), kernels=(3,)))
    arch = space.from_str("c8k3-c16k3@0.1-c8k3")
    texts = {space.to_str(n) for n in space.neighbours(arch)}
    assert "c16k3-c8k3" in texts  # layer 1 gone: layer 2 read {0, 1} and now reads {0}
    assert "c8k3-c8k3@0.1" in texts  # layer 2 gone: layer 3 read {2} and now reads layer 2's {0, 1}


def test_a_space_with_one_architecture_cannot_mutate():
    space = ChainCNN(ChainCNNConfig(max_layers=1, filters=(8,), kernels=(3,), pooling=False))
    assert space.size() == 1 and space.neighbours(space.from_str("c8k3")) == []
    with pytest.raises(ValueError):
        space.mutate(space.from_str("c8k3"), random.Random(0))


@pytest.mark.parametrize("config", [
    ChainCNNConfig(max_layers=3, filters=(8,), kernels=(1, 3), pooling=False, skips=True),
    ChainCNNConfig(max_layers=3, filters=(8, 16), kernels=(3,), strides=(1, 2), pooling=True, skips=False),
])
def test_size_is_exact(config):
    """Every token sequence decodes to a member and every member has tokens, so the distinct decodings of all
    sequences are the whole space."""
    space = ChainCNN(config)
    decoded = {space.to_str(space.from_tokens(t)) for t in itertools.product(*map(range, map(len, space.vocabulary())))}
    assert space.size() == len(decoded)


def test_size_counts_depths_settings_and_input_sets():
    per_layer = 3 * 3 * 3 * 2 * 2  # filters, kernel height, kernel width, stride, pooling
    inputs = [2 ** k - 1 for k in range(1, 6)]  # non-empty subsets of the earlier layers and the image
    expected, count = 0, 1
    for k in range(5):
        count *= per_layer * inputs[k]
        expected += count
    assert SPACE.size() == expected
    assert CHAIN_ONLY.size() == sum((2 * 2 * 2 * 2) ** n for n in range(1, 4))


@settings(max_examples=12, deadline=None)
@given(SPACES_UNDER_TEST, seeds, st.sampled_from([(1, 8, 8), (3, 32, 32), (1, 1, 1), (3, 5, 7)]))
def test_every_architecture_builds_and_trains_for_any_input_size(space, seed, shape):
    arch = sample(seed, space)
    model = space.build(arch, shape, num_classes=10)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (1, 2, 9)])
def test_the_deepest_most_downsampling_architecture_runs_on_tiny_inputs(shape):
    space = ChainCNN(ChainCNNConfig(max_layers=6, filters=(8,), kernels=(7,), strides=(3,)))
    text = "-".join(["c8k7s3p"] + [f"c8k7s3p@{'.'.join(map(str, range(k)))}" for k in range(2, 7)])
    model = space.build(space.from_str(text), shape, 3)
    model(torch.randn(2, *shape)).sum().backward()


@pytest.mark.parametrize("text", OLD_STRINGS)
def test_old_chain_strings_keep_their_meaning_and_form(text):
    space = ChainCNN(ChainCNNConfig(filters=(8, 16, 32, 64)))
    arch = space.from_str(text)
    assert space.to_str(arch) == text
    assert all(l.stride == 1 and l.kernel_h == l.kernel_w and l.inputs == (k,) for k, l in enumerate(arch.layers))


def test_a_chain_builds_the_same_network_and_checkpoint_keys_as_before_skips_existed():
    space = ChainCNN()
    model = space.build(space.from_str("c32k3p-c64k3"), (1, 8, 8), 10)
    assert [type(m).__name__ for m in model] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d",
                                                 "BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert {k.split(".")[0] for k in model.state_dict()} == {"0", "1", "4", "5", "9"}
    assert count_macs(model, (1, 8, 8)) == 64 * 32 * 9 + 16 * 64 * 32 * 9 + 640


def test_skip_inputs_are_pooled_to_the_smallest_map_and_concatenated():
    space = ChainCNN(ChainCNNConfig(filters=(8, 16), strides=(1, 2)))
    model = space.build(space.from_str("c8k3p-c16k3x5s2@0.1"), (1, 8, 8), 10)
    # layer 2 reads the image max-pooled from 8x8 to 4x4 (1 channel) and layer 1 (8 channels): 9 in, 2x2 out
    assert model[4].weight.shape == (16, 9, 3, 5)
    assert count_macs(model, (1, 8, 8)) == 64 * 8 * 9 + 4 * 16 * 9 * 15 + 16 * 10


def test_every_unconsumed_output_feeds_the_classifier():
    space = ChainCNN(ChainCNNConfig(filters=(8, 16)))
    model = space.build(space.from_str("c8k3-c16k3@0"), (3, 6, 6), 10)
    assert model[-1].in_features == 8 + 16  # nothing reads layer 1, so it joins layer 2 at the head
    assert count_params(model) == 8 * 3 * 9 + 16 + 16 * 3 * 9 + 32 + 24 * 10 + 10


def test_describe_draws_every_layer_pool_skip_and_concat():
    space = ChainCNN(ChainCNNConfig(filters=(8, 16, 32), strides=(1, 2)))
    graph = space.describe(space.from_str("c16k3p-c32k5x3s2@0.1-c8k1p@0"))
    labels = [label for _, label in graph.nodes]
    assert "conv 3x3, 16" in labels and "conv 5x3 /2, 32" in labels and "conv 1x1, 8" in labels
    assert labels.count("max pool 2x2") == 2 and labels.count("concat") == 2  # into layer 2, and into the head
    assert {"input", "global avg pool", "linear"} <= set(labels)
    ids = {node for node, _ in graph.nodes}
    assert all(src in ids and dst in ids for src, dst, _ in graph.edges)
    assert [e for e in graph.edges if e[2] == "skip"] == [("input", "conv2:concat", "skip"), ("input", "conv3", "skip"),
                                                         ("conv2", "gap:concat", "skip")]


def test_describe_of_a_chain_is_a_chain():
    graph = SPACE.describe(SPACE.from_str("c16k3p-c32k5-c8k1p"))
    labels = [label for _, label in graph.nodes]
    assert "conv 3x3, 16" in labels and "conv 5x5, 32" in labels and "conv 1x1, 8" in labels
    assert labels.count("max pool 2x2") == 2
    assert len(graph.edges) == len(graph.nodes) - 1


def test_display_is_short_and_shows_skips():
    space = ChainCNN(ChainCNNConfig(filters=(8, 16, 32), strides=(1, 2)))
    assert space.display(space.from_str("c16k3p-c32k5")) == "3x3·16 ▸pool → 5x5·32"
    assert space.display(space.from_str("c16k3-c32k5x3s2p@0.1")) == "3x3·16 → [0+1] 5x3·32 /2 ▸pool"


@pytest.mark.parametrize("text", [
    "", "c16", "c16k3-x", "c999k3", "c16k9", "c16k3-" * 5 + "c16k3", "__import__('os')", "c16k3--c16k3",
    "c16k3x3", "c16k3s1", "c016k3", "c16k3s4", "c16k3@0", "c16k3-c16k3@1", "c16k3-c16k3@2", "c16k3-c16k3@1.0",
    "c16k3-c16k3@0.0", "c16k3-c16k3@", "c16k3-c16k3@0..1", "c16k3pp", "c16k3ps2", "c16k3 -c16k3", "C16K3",
    "c" + "9" * 5000 + "k3",
])
def test_bad_strings_are_rejected_with_a_message(text):
    with pytest.raises(ArchParseError) as err:
        SPACE.from_str(text)
    assert str(err.value)


def test_strings_outside_the_options_are_rejected():
    with pytest.raises(ArchParseError, match="skip"):
        CHAIN_ONLY.from_str("c8k3-c8k3@0")
    with pytest.raises(ArchParseError, match="stride"):
        CHAIN_ONLY.from_str("c8k3s2")
    with pytest.raises(ArchParseError, match="pooling"):
        ChainCNN(ChainCNNConfig(pooling=False)).from_str("c16k3p")
    with pytest.raises(ArchParseError):
        SPACE.to_tokens(ChainArch((ConvLayer(16, 3, 3, 1, False, (1,)),)))  # layer 1 cannot read itself


def test_impossible_options_are_errors_naming_the_field():
    for raw, key in [({"max_layers": 0}, "max_layers"), ({"filters": ""}, "filters"), ({"kernels": []}, "kernels"),
                     ({"kernels": "3,4"}, "kernels"), ({"strides": ""}, "strides"), ({"strides": "4"}, "strides")]:
        with pytest.raises(OptionError) as err:
            parse_config(ChainCNNConfig, raw)
        assert err.value.key == key
    with pytest.raises(OptionError) as err:
        ChainCNNConfig(filters=())  # also when built in code
    assert err.value.key == "filters"
    assert parse_config(ChainCNNConfig, {"filters": "64,16", "pooling": "false", "skips": "off"}) == ChainCNNConfig(
        filters=(16, 64), pooling=False, skips=False)


def test_the_defaults_keep_a_digits_trial_small():
    c = ChainCNNConfig()
    assert (c.max_layers, c.filters, c.kernels, c.strides, c.pooling, c.skips) == (4, (16, 32, 64), (1, 3, 5), (1,),
                                                                                   True, True)


SQUARE = ChainCNN(ChainCNNConfig(max_layers=3, filters=(8, 16), kernels=(1, 3, 5), strides=(1, 2),
                                 square_kernels=True))


def test_with_square_kernels_every_layer_is_square_and_the_width_follows_the_height():
    rng = random.Random(0)
    arch = SQUARE.sample(rng)
    for _ in range(300):
        arch = SQUARE.mutate(arch, rng)
        assert all(l.kernel_h == l.kernel_w for l in arch.layers)
        assert SQUARE.from_tokens(SQUARE.to_tokens(arch)) == arch
        assert all(l.kernel_h == l.kernel_w for n in SQUARE.neighbours(arch) for l in n.layers)
    # per layer 2 filters x 3 kernels x 2 strides x pooling or not; layer k reads one of 2^k - 1 input sets
    per_layer = [2 * 3 * 2 * 2 * (2 ** k - 1) for k in range(1, 4)]
    assert SQUARE.size() == sum(math.prod(per_layer[:d]) for d in range(1, 4))
    with pytest.raises(ArchParseError, match="square"):
        SQUARE.from_str("c8k3x5")


def test_signals_build_one_dimensional_networks_with_skips_and_pooling():
    arch = SQUARE.from_str("c16k5p-c8k3s2@0.1-c16k1p@1.2")
    net = SQUARE.build(arch, (2, 40), 10)
    assert net(torch.randn(4, 2, 40)).shape == (4, 10)
    assert not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [c.kernel_size for c in convs] == [(5,), (3,), (1,)] and convs[1].in_channels == 2 + 16
    # outputs x inputs x taps: 40 x 2 x 5 x 16; pooled to 20, read with the 40-step input pooled to 20 (18 channels),
    # stride 2: 10 x 18 x 3 x 8; layers 1 and 2 at 10 steps (24 channels): 10 x 24 x 1 x 16; linear 16 x 10
    assert count_macs(net, (2, 40)) == 40 * 2 * 5 * 16 + 10 * 18 * 3 * 8 + 10 * 24 * 16 + 16 * 10
    with pytest.raises(ValueError, match="square_kernels"):
        ChainCNN().build(ChainCNN().from_str("c16k3"), (1, 40), 10)
    from nasjobs.estimators.zero_cost import _weights

    assert len(_weights(net)) == 4  # zero-cost proxies score the 1-D convolutions too, not just the classifier


def test_a_chain_cnn_learns_mnist1d_signals():
    from nasjobs.datasets import load_mnist1d
    from nasjobs.estimators.train import TrainConfig, TrainEstimator

    space = ChainCNN(ChainCNNConfig(filters=(16,), kernels=(5,), square_kernels=True))
    estimator = TrainEstimator(space, load_mnist1d(), TrainConfig(batch_size=128), torch.device("cpu"))
    result = estimator.evaluate(space.from_str("c16k5p-c16k5"), 3, seed=0)
    assert result.val_acc > 0.3  # ten classes: chance is 0.1
    assert result.curve[-1] > result.curve[0]
