"""MiniLLM (Gu et al. 2024): small-scale reproduction of the reverse-KL claims."""
