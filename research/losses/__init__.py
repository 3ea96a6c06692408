"""Pure loss functions: logit losses (classification.py) and feature losses (features.py)."""
from research.losses.classification import (cross_entropy, decoupled_kd_terms, dkd, hinton_kd, kl_divergence,
                                             soft_cross_entropy)
from research.losses.features import (attention_map, attention_transfer, pkt, rkd_angle, rkd_distance,
                                       similarity_preserving)
