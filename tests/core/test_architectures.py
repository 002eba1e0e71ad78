"""The VGG family: exact parameter counts, stable layer names in depth order, residual wiring."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from gradlab.core.architectures import VGG, build_model, count_parameters
from gradlab.science.layers import layer_names as layer_names_for
from gradlab.science.layers import parameter_count
from gradlab.science.spec import ExperimentSpec


@pytest.mark.parametrize(
    ("depth", "batch_norm", "residual", "expected"),
    [
        (8, False, False, 59_716),
        (38, False, False, 336_196),
        (38, True, False, 338_500),
        (38, True, True, 338_500),  # skips add no parameters
    ],
)
def test_parameter_counts_match_the_seed(depth: int, batch_norm: bool, residual: bool,
                                         expected: int) -> None:
    spec = ExperimentSpec(depth=depth, batch_norm=batch_norm, residual=residual)
    assert count_parameters(build_model(spec)) == expected
    assert parameter_count(spec) == expected


@pytest.mark.parametrize("depth", range(8, 99, 6))
def test_torch_free_layer_names_and_size_equal_the_built_models(depth: int) -> None:
    # The API and the reports use gradlab.science.layers instead of building a model; it must
    # agree with the model itself for every valid depth and variant (widths too).
    for batch_norm in (False, True):
        for residual in (False, True):
            for width, dataset in ((32, "cifar100"), (8, "cifar10")):
                spec = ExperimentSpec(depth=depth, batch_norm=batch_norm, residual=residual,
                                      width=width, data={"dataset": dataset})
                with torch.device("meta"):
                    model = build_model(spec)
                assert layer_names_for(spec) == model.gradflow_layer_names()
                assert parameter_count(spec) == count_parameters(model)


def test_vgg08_layers_are_the_seed_plots_nine_points_in_depth_order() -> None:
    assert layer_names_for(ExperimentSpec(depth=8)) == [
        "entry.conv", "entry.bn",
        "stage0.reduce.conv1", "stage0.reduce.conv2",
        "stage1.reduce.conv1", "stage1.reduce.conv2",
        "stage2.reduce.conv1", "stage2.reduce.conv2",
        "head.linear",
    ]


def test_vgg38_plain_has_39_layers_and_bn_variant_interleaves_gamma() -> None:
    plain = layer_names_for(ExperimentSpec(depth=38))
    assert len(plain) == 39
    assert plain[2:4] == ["stage0.block0.conv1", "stage0.block0.conv2"]
    assert plain[-2:] == ["stage2.reduce.conv2", "head.linear"]
    bn = layer_names_for(ExperimentSpec(depth=38, batch_norm=True))
    assert len(bn) == 39 + 36
    assert "stage0.block2.bn1" in bn
    assert bn.index("stage0.block2.conv1") + 1 == bn.index("stage0.block2.bn1")
    assert bn.index("stage2.reduce.conv1") < bn.index("stage2.reduce.bn1") < bn.index(
        "stage2.reduce.conv2")


def test_layer_names_are_module_paths_whose_weights_are_the_tracked_tensors() -> None:
    model = build_model(ExperimentSpec(depth=14, batch_norm=True))
    modules = dict(model.named_modules())
    for name, weight in model.gradflow_parameters():
        assert modules[name].weight is weight
    # biases never appear; BN gamma does
    assert all(not n.endswith("bias") for n in model.gradflow_layer_names())
    assert "entry.bn" in model.gradflow_layer_names()


def test_depth_order_matches_forward_order() -> None:
    """Registration order is execution order: hooks fire in the order of the names."""
    model = build_model(ExperimentSpec(depth=14, batch_norm=True, residual=True))
    names = dict(model.gradflow_parameters())
    modules = {model.get_submodule(n): n for n in names}
    fired: list[str] = []
    for m in modules:
        m.register_forward_hook(lambda mod, _i, _o: fired.append(modules[mod]))
    model(torch.randn(2, 3, 32, 32))
    assert fired == list(names)


def _reduction_output(reduction_skip: str) -> torch.Tensor:
    torch.manual_seed(0)
    spec = ExperimentSpec(depth=8, residual=True, reduction_skip=reduction_skip)
    model = build_model(spec).eval()
    # Zero the reduction convs: what remains of the block's output is the skip path alone.
    block = model.stage0.reduce
    for conv in (block.conv1, block.conv2):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.rand(1, 32, 8, 8)
    return block(x), x


def test_reduction_skip_avgpool_carries_the_pooled_identity_and_none_does_not() -> None:
    out, x = _reduction_output("avgpool")
    assert torch.allclose(out, torch.nn.functional.avg_pool2d(x, 2))  # x >= 0: LReLU is identity
    out, _ = _reduction_output("none")
    assert torch.count_nonzero(out) == 0


def test_processing_block_residual_adds_the_identity() -> None:
    model = build_model(ExperimentSpec(depth=14, residual=True)).eval()
    block = model.stage1.block0
    torch.nn.init.zeros_(block.conv2.weight)
    x = torch.rand(2, 32, 16, 16)
    assert torch.equal(block(x), x)


def test_batch_norm_sits_between_conv_and_activation() -> None:
    """With BN the conv output is normalised: a huge conv weight leaves the block output bounded."""
    model = build_model(ExperimentSpec(depth=14, batch_norm=True)).train()
    block = model.stage0.block0
    with torch.no_grad():
        block.conv1.weight.mul_(1e6)
        block.conv2.weight.mul_(1e6)
    out = block(torch.randn(8, 32, 16, 16))
    assert out.abs().max() < 100


def _vgg14(seed: int) -> VGG:
    torch.manual_seed(seed)
    spec = ExperimentSpec(depth=14, width=8, batch_norm=True, residual=True)
    return build_model(spec).to(memory_format=torch.channels_last).train()


def test_forward_many_is_each_model_alone_with_its_own_running_statistics() -> None:
    """Three models side by side (grouped convs, BN over stacked channels, batched head):
    each run's logits and BN running statistics are what the model computes alone."""
    models = [_vgg14(seed) for seed in (0, 1, 2)]
    twins = [copy.deepcopy(m) for m in models]
    xs = [torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
          for _ in models]
    fused = VGG.forward_many(models, torch.cat(xs, 1).contiguous(
        memory_format=torch.channels_last))
    assert fused.shape == (3, 4, 100)
    for i, (twin, x) in enumerate(zip(twins, xs, strict=True)):
        torch.testing.assert_close(fused[i], twin(x), rtol=1e-4, atol=1e-5)
        for (name, got), (_, want) in zip(models[i].named_buffers(), twin.named_buffers(),
                                          strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


def test_a_model_alone_concatenates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """N = 1 is each op's own module call: no concatenation or stacking of one tensor."""
    calls: list[str] = []
    for name in ("cat", "stack"):
        real = getattr(torch, name)

        def counting(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, counting)
    model = _vgg14(0)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    assert calls == []
