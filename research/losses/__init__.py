"""Pure loss functions: logits (classification.py), features (features.py), CRD's NCE with memory banks
(contrastive.py), metric learning (metric.py: triplet, recall@k) and token-level divergences for
language models, chunked over tokens (sequence.py)."""
from research.losses.classification import (cross_entropy, decoupled_kd_terms, dkd, hinton_kd, kl_divergence,
                                             soft_cross_entropy)
from research.losses.features import (attention_map, attention_transfer, pkt, rkd_angle, rkd_distance,
                                       similarity_preserving)
