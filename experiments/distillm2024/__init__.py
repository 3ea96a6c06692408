"""DistiLLM (Ko et al. 2024): skew KL; claim (a) is tests/test_distillm_gradient.py."""
