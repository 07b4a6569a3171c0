"""Pure tensor scoring functions: no hooks, no models, no I/O. Each is tested on hand-made tensors."""
