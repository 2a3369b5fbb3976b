"""Workflows: whole user journeys built from the layers below (the demo: data, train, evaluate, benchmark)."""
