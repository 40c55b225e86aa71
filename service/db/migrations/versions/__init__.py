"""One file per schema revision, applied in order; never edit a revision that has been released."""
