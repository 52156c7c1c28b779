"""The matrix suite: run under each pinned torchmetrics release (``ssim-patch matrix``)."""
