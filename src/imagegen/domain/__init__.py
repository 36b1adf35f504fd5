"""Pure rules of imagegen: no I/O, no imports from the rest of the package."""
