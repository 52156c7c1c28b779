"""What the default suite (tests/) and the matrix suite (tests/matrix) share: the independent
float64 references, the argument forms and bad inputs, the parity and gradient checks, and the
runners of child processes. Imported as ``tests.helpers.<module>``; no test module imports another."""
