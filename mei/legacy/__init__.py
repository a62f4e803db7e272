"""Paths kept stable for method configurations written for the reference framework."""
