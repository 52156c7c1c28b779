"""ssim-patch's tests: a package, so that both suites import ``tests.helpers`` by name."""
