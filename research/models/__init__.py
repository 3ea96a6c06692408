"""Model zoo: `build(model_config)` turns a config section into a linen module."""
import flax.linen as nn
import ml_collections

from research.errors import UserError
from research.models.cnn import CNN, ResNet
from research.models.mlp import MLP


def build(config: ml_collections.ConfigDict) -> nn.Module:
  """Returns the linen module named by `config.name`, configured by the rest of `config`."""
  widths = tuple(config.widths)
  if config.name == "mlp":
    return MLP(widths, config.num_classes, config.dropout_input, config.dropout_hidden)
  if config.name == "cnn":
    return CNN(widths, config.num_classes, config.dropout_hidden)
  if config.name == "resnet":
    return ResNet(widths, config.num_classes, config.blocks_per_stage)
  raise UserError(f"Unknown model.name={config.name!r}; choose one of: mlp, cnn, resnet.")
