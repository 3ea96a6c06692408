"""Model zoo: `build(model_config)` turns a config section into a linen module.

Every model records named features with `tap(self, name, x)` (a no-op unless "taps" is
mutable): "stem", "stage1".."stageK" (MLP: "hidden1".."hiddenN"), "penultimate" (the final
Dense's input, (B, C)). The CIFAR family of the CRD benchmark (Tian et al. 2020) follows
RepDistiller's definitions; its names ignore every config key but `num_classes`.
"""
import flax.linen as nn
import ml_collections

from research.errors import UserError
from research.models import cifar_resnet, mobile, vgg
from research.models.cnn import CNN, ResNet
from research.models.decoder import DecoderLM
from research.models.mlp import MLP

# name → constructor(num_classes) for the CIFAR family.
CIFAR = {**cifar_resnet.MODELS, **vgg.MODELS, **mobile.MODELS}
NAMES = ("mlp", "cnn", "resnet", "decoder") + tuple(CIFAR)


def build(config: ml_collections.ConfigDict, vocab_size: int = 0) -> nn.Module:
  """Returns the linen module named by `config.name`, configured by the rest of `config`.

  `vocab_size` is the tokenizer's, for the decoder: config.vocab_size 0 takes it, a larger value
  pads the vocabulary, a smaller one is an error (tokens would fall outside the embedding).
  """
  if config.name == "decoder":
    return _decoder(config, vocab_size)
  widths = tuple(config.widths)
  if config.name == "mlp":
    return MLP(widths, config.num_classes, config.dropout_input, config.dropout_hidden)
  if config.name == "cnn":
    return CNN(widths, config.num_classes, config.dropout_hidden, config.blocks_per_stage)
  if config.name == "resnet":
    return ResNet(widths, config.num_classes, config.blocks_per_stage)
  if config.name in CIFAR:
    return CIFAR[config.name](config.num_classes)
  raise UserError(f"Unknown model.name={config.name!r}; choose one of: {', '.join(NAMES)}.")


def _decoder(config, vocab_size: int) -> DecoderLM:
  vocab = config.vocab_size or vocab_size
  if not vocab:
    raise UserError("model 'decoder' needs a vocabulary size: train it on a text dataset (its "
                    "tokenizer sets it) or set config.model.vocab_size.")
  if config.vocab_size and vocab_size and config.vocab_size < vocab_size:
    raise UserError(f"config.model.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                    f"{vocab_size} tokens; set it to 0 (the tokenizer's) or ≥ {vocab_size}.")
  try:
    return DecoderLM(vocab, config.dim, config.depth, config.num_heads, config.num_kv_heads,
                     config.mlp_dim, config.tie_embeddings)
  except ValueError as e:
    raise UserError(f"config.model: {e}") from e
