"""Adapters of the loss to training frameworks. Each imports its framework itself, so importing
``encouraging_loss`` (or this package) imports none of them."""
