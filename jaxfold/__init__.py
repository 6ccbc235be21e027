"""jaxfold: AlphaFold2 in JAX/Flax."""
