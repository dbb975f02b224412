import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from brainjax import models


def _shapes(backbone, size, head="enhanced"):
    model = models.create_model(dict(backbone=backbone, head=head, head_hidden=(1024, 512), dropout=0.5), 4)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, size, size, 1)), train=False))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, size, size, 1)), train=False), variables)
    return variables, out


KERAS_VGG16 = [f"block{b}_conv{c}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for c in range(1, n + 1)]


def test_vgg16_layers_and_shapes():
    variables, out = _shapes("vgg16", 64)
    assert out.shape == (2, 4)
    base = variables["params"]["backbone"]
    assert list(base) == KERAS_VGG16
    assert base["block1_conv1"]["kernel"].shape == (3, 3, 3, 64)
    assert base["block5_conv3"]["kernel"].shape == (3, 3, 512, 512)


def test_vgg19_has_16_convs():
    variables, _ = _shapes("vgg19", 32)
    assert len(variables["params"]["backbone"]) == 16
    assert "block5_conv4" in variables["params"]["backbone"]


def test_resnet50v2_structure():
    model = models.make_backbone("resnet50v2")
    x = jnp.zeros((1, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    feats = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert feats.shape == (1, 7, 7, 2048)  # Keras ResNet50V2 include_top=False at 224
    params = variables["params"]
    n_params = sum(v.size for v in jax.tree.leaves(params))
    n_stats = sum(v.size for v in jax.tree.leaves(variables["batch_stats"]))
    assert n_params + n_stats == 23_564_800  # keras ResNet50V2(include_top=False).count_params()
    flat = ["/".join(k) for k in traverse_util.flatten_dict(params)]
    assert "conv1_conv/kernel" in flat and "post_bn/scale" in flat
    assert "conv2_block1/0_conv/kernel" in flat and "conv2_block2/0_conv/kernel" not in flat
    assert params["conv4_block6"]["2_conv"]["kernel"].shape == (3, 3, 256, 256)


def test_odd_sizes_round_like_keras():
    model = models.make_backbone("resnet50v2")
    x = jnp.zeros((1, 193, 161, 3))
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert jax.eval_shape(lambda v: model.apply(v, x), v).shape == (1, 7, 6, 2048)
    vgg = models.make_backbone("vgg16")
    v = jax.eval_shape(lambda: vgg.init(jax.random.key(0), x))
    assert jax.eval_shape(lambda v: vgg.apply(v, x), v).shape == (1, 6, 5, 512)


def test_heads():
    variables, _ = _shapes("tiny", 32, "enhanced")
    head = variables["params"]["head"]
    assert head["dense_0"]["kernel"].shape[1] == 1024 and head["dense_1"]["kernel"].shape == (1024, 512)
    assert head["logits"]["kernel"].shape == (512, 4)
    variables, _ = _shapes("tiny", 32, "baseline")
    assert list(variables["params"]["head"]) == ["logits"]


def test_dropout_active_only_in_training():
    model = models.create_model(dict(backbone="tiny", head="enhanced", head_hidden=(64,), dropout=0.5), 4)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    v = model.init(jax.random.key(0), x)
    apply = jax.jit(model.apply, static_argnames="train")  # compiled, not op by op
    a = apply(v, x, train=False)
    assert (a == apply(v, x, train=False)).all()
    b = apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not jnp.allclose(a, b)


def test_unknown_backbone_is_clear():
    from brainjax.errors import UserError

    with pytest.raises(UserError, match="model.backbone"):
        models.make_backbone("alexnet")


@pytest.mark.parametrize("name", ["default", "smoke", "vgg16_frozen", "vgg19_frozen", "resnet50v2_frozen",
                                  "vgg16_finetune_block5", "sartaj_tiny", "sartaj_tiny_clean",
                                  "sartaj_transfer:vgg16,baseline", "sartaj_transfer:vgg19,enhanced",
                                  "sartaj_transfer:resnet50v2,enhanced"])
def test_configs_build_their_model_and_partition(name):
    import importlib

    from brainjax import partition

    module, _, arg = name.partition(":")
    get = importlib.import_module(f"configs.{module}").get_config
    config = get(arg) if arg else get()
    model = models.create_model(config.model, 4)
    size = min(config.image_size, 64)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1))))
    labels = traverse_util.flatten_dict(partition.labels(variables["params"], config.trainable))
    trainable = {"/".join(k) for k, v in labels.items() if v == "trainable"}
    assert any(k.startswith("head/") for k in trainable)
    if name == "vgg16_finetune_block5":
        assert any(k.startswith("backbone/block5_") for k in trainable)
        assert not any(k.startswith("backbone/block4_") for k in trainable)
    elif config.model.weights == "imagenet":
        assert all(k.startswith("head/") for k in trainable)
