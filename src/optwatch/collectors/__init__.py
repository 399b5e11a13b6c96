"""What the probe's sampler thread measures besides the training loop: GPUs, allocator, host.

Torch-free and textual-free; each collector answers "not available" rather than raising.
"""
