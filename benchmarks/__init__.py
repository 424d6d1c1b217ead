"""The benchmarks of timm-sae: the Fashion-MNIST studies, speed and the conversion table (see README.md here).

Run from the repository root as ``python benchmarks/<name>.py`` or ``python -m benchmarks.<name>``.
"""
