"""Synthetic 4-chamber cardiac MR cines with and without the left ventricular outflow tract (LVOT) in the slice."""
