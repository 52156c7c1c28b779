"""``python -m ssim_patch``: the ``ssim-patch`` command."""

from ssim_patch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
