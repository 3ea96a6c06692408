"""Pure loss functions; see classification.py."""
from research.losses.classification import (cross_entropy, decoupled_kd_terms, dkd, hinton_kd, kl_divergence,
                                             soft_cross_entropy)
