"""Analysis: FLOP counting and arithmetic intensity."""
