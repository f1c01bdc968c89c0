"""Removal attacks: they change the weights to erase the mark."""
