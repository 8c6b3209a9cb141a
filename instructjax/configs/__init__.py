"""Configs that ship inside the package, so an installed instructjax finds its default
(`instructjax.config.DEFAULT_CONFIG`) without the repository."""
