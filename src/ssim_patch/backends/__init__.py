"""The engine's backends: each way of computing SSIM in a module of its own behind
:class:`ssim_patch.backends._protocol.Backend`. (The chooser lands here with the split of
``_kernel.py``.)"""
